package qmp

// allowed is the read-only allow-list: qmp_capabilities, which every session
// must send once, and query commands that only read state. It is fixed at
// compile time and cannot be widened by options; see the package comment.
var allowed = map[string]struct{}{
	"qmp_capabilities":           {},
	"query-status":               {},
	"query-name":                 {},
	"query-uuid":                 {},
	"query-version":              {},
	"query-commands":             {},
	"query-qmp-schema":           {},
	"query-balloon":              {},
	"query-block":                {},
	"query-blockstats":           {},
	"query-block-jobs":           {},
	"query-jobs":                 {},
	"query-migrate":              {},
	"query-migrate-capabilities": {},
	"query-vnc":                  {},
	"query-spice":                {},
	"query-chardev":              {},
	"query-kvm":                  {},
	"query-cpus-fast":            {},
	"query-memory-size-summary":  {},
	"query-memory-devices":       {},
	"query-dump":                 {},
	"query-pr-managers":          {},
}

// Allowed reports whether Execute will send command: true only for
// qmp_capabilities and the query-* commands of the read-only allow-list.
func Allowed(command string) bool {
	_, ok := allowed[command]
	return ok
}

// AllowedCommands returns the allow-list, for documentation and tests.
func AllowedCommands() []string {
	out := make([]string, 0, len(allowed))
	for c := range allowed {
		out = append(out, c)
	}
	return out
}
