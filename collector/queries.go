package collector

// A query is one of the read-only commands the watcher runs to reconcile
// state: what to send, what to decode the reply into, and how to apply it
// (or its absence) to the state.
type query struct {
	need    need
	command string
	reply   func() any
	apply   func(s *vmState, reply any)
	absent  func(s *vmState)
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

// queries are run in this order on every (re)connect and refresh.
var queries = []query{
	{needStatus, "query-status",
		func() any { return new(statusReply) },
		func(s *vmState, r any) { s.setStatus(r.(*statusReply).Status) },
		func(s *vmState) { s.status = "" }},
	{needBalloon, "query-balloon",
		func() any { return new(balloonReply) },
		func(s *vmState, r any) { s.setBalloon(r.(*balloonReply).Actual, true) },
		func(s *vmState) { s.setBalloon(0, false) }},
	{needBlock, "query-block",
		func() any { return new([]queryBlockEntry) },
		func(s *vmState, r any) { s.setBlock(*r.(*[]queryBlockEntry)) },
		func(s *vmState) {}},
	{needMigrate, "query-migrate",
		func() any { return new(queryMigrate) },
		func(s *vmState, r any) { s.setMigrate(*r.(*queryMigrate)) },
		func(s *vmState) { s.mig.known = false }},
	{needJobs, "query-jobs",
		func() any { return new([]queryJob) },
		func(s *vmState, r any) { s.setJobs(*r.(*[]queryJob)) },
		func(s *vmState) {}},
	{needVNC, "query-vnc",
		func() any { return new(displayReply) },
		func(s *vmState, r any) { d := r.(*displayReply); s.vnc.set(enabledFlag(d.Enabled), len(d.Clients)) },
		func(s *vmState) { s.vnc.set(-1, 0) }},
	{needSpice, "query-spice",
		func() any { return new(displayReply) },
		func(s *vmState, r any) { d := r.(*displayReply); s.spice.set(enabledFlag(d.Enabled), len(d.Channels)) },
		func(s *vmState) { s.spice.set(-1, 0) }},
}
