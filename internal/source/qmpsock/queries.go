package qmpsock

import "github.com/qmp-exporter/qmp_exporter/internal/vmstate"

// A query is one of the read-only commands the watcher runs to reconcile
// a VM's state: the part of the state it re-reads, what to send, what to
// decode the reply into, and how to apply it (or its absence) to the
// state. Every command here must be on qmp's read-only allow-list, which
// qmp.Conn enforces before anything is written.
type query struct {
	need    vmstate.Need
	command string
	reply   func() any
	apply   func(s *vmstate.State, reply any)
	absent  func(s *vmstate.State)
}

type statusReply struct {
	Status string `json:"status"`
}

type balloonReply struct {
	Actual uint64 `json:"actual"`
}

type displayReply struct {
	Enabled  bool  `json:"enabled"`
	Clients  []any `json:"clients"`  // query-vnc
	Channels []any `json:"channels"` // query-spice
}

func enabledFlag(b bool) int8 {
	if b {
		return 1
	}
	return 0
}

// queries is the read-only query plan, run in this order on every
// (re)connect and refresh, and for the parts of the state an event made
// uncertain (vmstate.Need).
var queries = []query{
	{vmstate.NeedStatus, "query-status",
		func() any { return new(statusReply) },
		func(s *vmstate.State, r any) { s.SetStatus(r.(*statusReply).Status) },
		func(s *vmstate.State) { s.SetStatus("") }},
	{vmstate.NeedBalloon, "query-balloon",
		func() any { return new(balloonReply) },
		func(s *vmstate.State, r any) { s.SetBalloon(r.(*balloonReply).Actual, true) },
		func(s *vmstate.State) { s.SetBalloon(0, false) }},
	{vmstate.NeedBlock, "query-block",
		func() any { return new([]vmstate.BlockEntry) },
		func(s *vmstate.State, r any) { s.SetBlock(*r.(*[]vmstate.BlockEntry)) },
		func(s *vmstate.State) {}},
	{vmstate.NeedMigrate, "query-migrate",
		func() any { return new(vmstate.MigrateInfo) },
		func(s *vmstate.State, r any) { s.SetMigrate(*r.(*vmstate.MigrateInfo)) },
		func(s *vmstate.State) { s.ForgetMigration() }},
	{vmstate.NeedJobs, "query-jobs",
		func() any { return new([]vmstate.JobInfo) },
		func(s *vmstate.State, r any) { s.SetJobs(*r.(*[]vmstate.JobInfo)) },
		func(s *vmstate.State) {}},
	{vmstate.NeedVNC, "query-vnc",
		func() any { return new(displayReply) },
		func(s *vmstate.State, r any) {
			d := r.(*displayReply)
			s.VNC.Set(enabledFlag(d.Enabled), len(d.Clients))
		},
		func(s *vmstate.State) { s.VNC.Set(-1, 0) }},
	{vmstate.NeedSpice, "query-spice",
		func() any { return new(displayReply) },
		func(s *vmstate.State, r any) {
			d := r.(*displayReply)
			s.Spice.Set(enabledFlag(d.Enabled), len(d.Channels))
		},
		func(s *vmstate.State) { s.Spice.Set(-1, 0) }},
}
