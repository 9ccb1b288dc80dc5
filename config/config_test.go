package config

import (
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"
)

func TestLoadGood(t *testing.T) {
	want := &Config{
		VMs: []VM{
			{
				Name:           "db-primary",
				Socket:         "/run/qemu/db.qmp",
				Labels:         map[string]string{"team": "storage", "tier": "1"},
				NameFromConfig: true,
			},
			{Name: "web-1", Socket: "/run/qemu/web-1.qmp"},
			{Name: "build.monitor", Socket: "unix:sockets/build.monitor.sock", Labels: map[string]string{}},
			{Name: "qemu-host.example.com:4444", Socket: "tcp:qemu-host.example.com:4444"},
			{
				Name:           "v6",
				Socket:         "tcp:[::1]:4445",
				Labels:         map[string]string{"_private": "yes", "rack": "r12"},
				NameFromConfig: true,
			},
		},
		Discovery: Discovery{
			SocketGlobs:    []string{"/run/qemu/*.qmp", "/var/lib/vms/[a-z]*/qmp.sock"},
			RescanInterval: Duration(5 * time.Minute),
			StaleAfter:     Duration(DefaultStaleAfter),
		},
	}
	got, err := Load("testdata/good.yml")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Load mismatch (-want +got):\n%s", diff)
	}
}

func TestLoadBad(t *testing.T) {
	longPath := "/run/qemu/a-very-long-directory-name-for-vm-sockets/and-another-level-of-nesting/one-more-level/here/web-1.qmp"
	tests := []struct {
		name string // the file is testdata/bad-<name>.yml
		want string // the whole error message, so that it gets reviewed
	}{
		{
			name: "unknown-field",
			want: `error parsing config file "testdata/bad-unknown-field.yml": yaml: unmarshal errors:
  line 3: field sockt not found in type config.VM`,
		},
		{
			name: "duration",
			want: `error parsing config file "testdata/bad-duration.yml": yaml: unmarshal errors:
  line 3: invalid duration "5 minutes", want a number and a unit such as "30s", "5m" or "1h30m"`,
		},
		{
			name: "rescan-interval",
			want: `error parsing config file "testdata/bad-rescan-interval.yml": discovery.rescan_interval: must be greater than 0, got 0s`,
		},
		{
			name: "duplicate-name",
			want: `error parsing config file "testdata/bad-duplicate-name.yml": vms[2] (derived name "web-1"): duplicate name, also used by vms[0]
vms[3] (name "db"): duplicate name, also used by vms[1]`,
		},
		{
			name: "duplicate-socket",
			want: `error parsing config file "testdata/bad-duplicate-socket.yml": vms[1] (name "b"): duplicate socket "unix:/run/qemu/./vm.qmp", also used by vms[0]`,
		},
		{
			name: "tcp-port",
			want: `error parsing config file "testdata/bad-tcp-port.yml": vms[0] (name "remote"): invalid socket "tcp:10.0.0.5:70000": port "70000" is not a number from 1 to 65535`,
		},
		{
			name: "missing-socket",
			want: `error parsing config file "testdata/bad-missing-socket.yml": vms[1] (name "web-2"): socket is required
vms[2]: socket is required`,
		},
		{
			name: "label-name",
			want: `error parsing config file "testdata/bad-label-name.yml": vms[0] (name "web-1"): invalid label name "2fast", must match ^[a-zA-Z_][a-zA-Z0-9_]*$
vms[0] (name "web-1"): invalid label name "__meta", names starting with __ are reserved for Prometheus
vms[0] (name "web-1"): invalid label name "team-name", must match ^[a-zA-Z_][a-zA-Z0-9_]*$`,
		},
		{
			name: "reserved-label",
			want: `error parsing config file "testdata/bad-reserved-label.yml": vms[0] (derived name "web-1"): label name "vm" is reserved, the exporter sets it to the VM's name`,
		},
		{
			name: "glob",
			want: `error parsing config file "testdata/bad-glob.yml": discovery.socket_globs[1]: invalid glob "/run/*/vm[0-9.qmp": syntax error in pattern`,
		},
		{
			name: "long-path",
			want: `error parsing config file "testdata/bad-long-path.yml": vms[0]: invalid socket "` + longPath + `": unix socket path is 110 bytes long, but sun_path holds at most 107`,
		},
		{
			name: "two-documents",
			want: `error parsing config file "testdata/bad-two-documents.yml": yaml: line 3: a second YAML document starts here, but the file must hold only one`,
		},
	}
	tested := map[string]bool{}
	for _, tc := range tests {
		path := "testdata/bad-" + tc.name + ".yml"
		tested[path] = true
		t.Run(tc.name, func(t *testing.T) {
			c, err := Load(path)
			if err == nil {
				t.Fatalf("Load(%q) = %+v, want an error", path, c)
			}
			if diff := cmp.Diff(tc.want, err.Error()); diff != "" {
				t.Errorf("Load(%q) error mismatch (-want +got):\n%s", path, diff)
			}
		})
	}
	files, err := filepath.Glob("testdata/bad-*.yml")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if !tested[f] {
			t.Errorf("%s has no test case", f)
		}
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load("testdata/does-not-exist.yml")
	want := `error parsing config file "testdata/does-not-exist.yml": open testdata/does-not-exist.yml: no such file or directory`
	if err == nil || err.Error() != want {
		t.Errorf("Load error = %v, want %s", err, want)
	}
}

func TestParse(t *testing.T) {
	defaults := Discovery{RescanInterval: Duration(DefaultRescanInterval), StaleAfter: Duration(DefaultStaleAfter)}
	tests := []struct {
		name    string
		in      string
		want    *Config
		wantErr string
	}{
		{name: "empty", in: "", want: &Config{Discovery: defaults}},
		{name: "only comments", in: "# nothing yet\n", want: &Config{Discovery: defaults}},
		{name: "null document", in: "~\n", want: &Config{Discovery: defaults}},
		{name: "leading document marker", in: "---\nvms: []\n", want: &Config{VMs: []VM{}, Discovery: defaults}},
		{name: "empty discovery keeps defaults", in: "discovery:\n", want: &Config{Discovery: defaults}},
		{
			name: "empty rescan_interval keeps default",
			in:   "discovery:\n  socket_globs: ['/run/*.qmp']\n  rescan_interval:\n",
			want: &Config{Discovery: Discovery{SocketGlobs: []string{"/run/*.qmp"}, RescanInterval: Duration(DefaultRescanInterval), StaleAfter: Duration(DefaultStaleAfter)}},
		},
		{
			name: "compound duration",
			in:   "discovery:\n  rescan_interval: 1h30m\n",
			want: &Config{Discovery: Discovery{RescanInterval: Duration(90 * time.Minute), StaleAfter: Duration(DefaultStaleAfter)}},
		},
		{
			name: "tcp name uses canonical port",
			in:   "vms:\n  - socket: tcp:10.0.0.5:04444\n",
			want: &Config{VMs: []VM{{Name: "10.0.0.5:4444", Socket: "tcp:10.0.0.5:04444"}}, Discovery: defaults},
		},
		{
			name:    "configured name equal to another derived name",
			in:      "vms:\n  - socket: /a/web.qmp\n  - name: web\n    socket: /b/other.qmp\n",
			wantErr: `vms[1] (name "web"): duplicate name, also used by vms[0]`,
		},
		{
			name:    "tcp and unix with the same derived name",
			in:      "vms:\n  - socket: tcp:h:1\n  - socket: /run/h:1\n",
			wantErr: `vms[1] (derived name "h:1"): duplicate name, also used by vms[0]`,
		},
		{
			name:    "duplicate tcp socket",
			in:      "vms:\n  - {name: a, socket: 'tcp:h:80'}\n  - {name: b, socket: 'tcp:h:080'}\n",
			wantErr: `vms[1] (name "b"): duplicate socket "tcp:h:080", also used by vms[0]`,
		},
		{
			name:    "name not derivable",
			in:      "vms:\n  - socket: /run/qemu/.qmp\n",
			wantErr: `vms[0]: cannot derive a valid name from socket "/run/qemu/.qmp", set one with name`,
		},
		{
			name:    "socket with NUL",
			in:      "vms:\n  - socket: \"/run/a\\0b\"\n",
			wantErr: `vms[0]: invalid socket "/run/a\x00b": unix socket path contains a NUL byte`,
		},
		{
			name:    "name too long",
			in:      "vms:\n  - name: " + strings.Repeat("n", 257) + "\n    socket: /a.qmp\n",
			wantErr: `vms[0] (name "` + strings.Repeat("n", 257) + `"): invalid name: 257 bytes long, longer than the limit of 256`,
		},
		{
			name:    "label value not UTF-8",
			in:      "vms:\n  - socket: /a.qmp\n    labels: {team: !!binary /w==}\n",
			wantErr: `vms[0] (derived name "a"): invalid value for label "team": not valid UTF-8`,
		},
		{
			name:    "label value too long",
			in:      "vms:\n  - socket: /a.qmp\n    labels: {team: " + strings.Repeat("v", 257) + "}\n",
			wantErr: `vms[0] (derived name "a"): invalid value for label "team": 257 bytes long, longer than the limit of 256`,
		},
		{
			name:    "reserved labels instance and job",
			in:      "vms:\n  - socket: /a.qmp\n    labels: {job: x, instance: y}\n",
			wantErr: "vms[0] (derived name \"a\"): label name \"instance\" is reserved, Prometheus sets it\nvms[0] (derived name \"a\"): label name \"job\" is reserved, Prometheus sets it",
		},
		{
			name:    "empty glob",
			in:      "discovery:\n  socket_globs: ['']\n",
			wantErr: `discovery.socket_globs[0]: glob is empty`,
		},
		{
			name:    "negative rescan_interval",
			in:      "discovery:\n  rescan_interval: -5s\n",
			wantErr: `discovery.rescan_interval: must be greater than 0, got -5s`,
		},
		{
			name:    "duration without unit",
			in:      "discovery:\n  rescan_interval: 30\n",
			wantErr: "yaml: unmarshal errors:\n  line 2: invalid duration \"30\", want a number and a unit such as \"30s\", \"5m\" or \"1h30m\"",
		},
		{
			name:    "duration as a mapping",
			in:      "discovery:\n  rescan_interval: {s: 30}\n",
			wantErr: "yaml: unmarshal errors:\n  line 2: cannot unmarshal !!map into a duration",
		},
		{
			name:    "unknown top-level key",
			in:      "vms: []\ntargets: []\n",
			wantErr: "yaml: unmarshal errors:\n  line 2: field targets not found in type config.Config",
		},
		{
			name:    "unknown discovery key",
			in:      "discovery:\n  globs: []\n",
			wantErr: "yaml: unmarshal errors:\n  line 2: field globs not found in type config.Discovery",
		},
		{
			name:    "duplicate key",
			in:      "vms: []\nvms: []\n",
			wantErr: "yaml: unmarshal errors:\n  line 2: mapping key \"vms\" already defined at line 1",
		},
		{
			name:    "not a mapping",
			in:      "- socket: /a.qmp\n",
			wantErr: "yaml: unmarshal errors:\n  line 1: cannot unmarshal !!seq into config.Config",
		},
		{
			name:    "syntax error",
			in:      "vms: [\n",
			wantErr: "yaml: line 1: did not find expected node content",
		},
		{
			name:    "trailing empty document",
			in:      "vms: []\n---\n",
			wantErr: "yaml: line 2: a second YAML document starts here, but the file must hold only one",
		},
		{
			name: "all problems are reported",
			in: `vms:
  - socket: tcp:h
  - name: x
    socket: /a.qmp
    labels: {vm: x}
discovery:
  socket_globs: ['[']
  rescan_interval: 0s
`,
			wantErr: `vms[0]: invalid socket "tcp:h": want tcp:HOST:PORT: address h: missing port in address
vms[1] (name "x"): label name "vm" is reserved, the exporter sets it to the VM's name
discovery.socket_globs[0]: invalid glob "[": syntax error in pattern
discovery.rescan_interval: must be greater than 0, got 0s`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse([]byte(tc.in))
			if tc.wantErr != "" {
				if err == nil {
					t.Fatalf("Parse = %+v, want error %q", got, tc.wantErr)
				}
				if diff := cmp.Diff(tc.wantErr, err.Error()); diff != "" {
					t.Errorf("Parse error mismatch (-want +got):\n%s", diff)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Parse mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseSocket(t *testing.T) {
	path107 := "/" + strings.Repeat("p", 106)
	path108 := "/" + strings.Repeat("p", 107)
	tests := []struct {
		name        string
		in          string
		wantNetwork string
		wantAddress string
		wantErr     string
	}{
		{name: "absolute path", in: "/run/qemu/web-1.qmp", wantNetwork: "unix", wantAddress: "/run/qemu/web-1.qmp"},
		{name: "relative path", in: "vm/qmp.sock", wantNetwork: "unix", wantAddress: "vm/qmp.sock"},
		{name: "unix prefix", in: "unix:/run/qemu/web-1.qmp", wantNetwork: "unix", wantAddress: "/run/qemu/web-1.qmp"},
		{name: "unix prefix relative", in: "unix:web-1.qmp", wantNetwork: "unix", wantAddress: "web-1.qmp"},
		{name: "abstract", in: "@qemu-web-1", wantNetwork: "unix", wantAddress: "@qemu-web-1"},
		{name: "prefixes are case sensitive", in: "TCP:h:1", wantNetwork: "unix", wantAddress: "TCP:h:1"},
		{name: "107-byte path", in: path107, wantNetwork: "unix", wantAddress: path107},
		{name: "unix prefix does not count", in: "unix:" + path107, wantNetwork: "unix", wantAddress: path107},
		{name: "tcp host name", in: "tcp:localhost:4444", wantNetwork: "tcp", wantAddress: "localhost:4444"},
		{name: "tcp IPv4", in: "tcp:10.0.0.5:4444", wantNetwork: "tcp", wantAddress: "10.0.0.5:4444"},
		{name: "tcp IPv6", in: "tcp:[::1]:4444", wantNetwork: "tcp", wantAddress: "[::1]:4444"},
		{name: "tcp port 1", in: "tcp:h:1", wantNetwork: "tcp", wantAddress: "h:1"},
		{name: "tcp port 65535", in: "tcp:h:65535", wantNetwork: "tcp", wantAddress: "h:65535"},
		{name: "tcp leading zeros", in: "tcp:h:00080", wantNetwork: "tcp", wantAddress: "h:80"},

		{name: "empty", in: "", wantErr: `socket is empty`},
		{name: "unix prefix only", in: "unix:", wantErr: `invalid socket "unix:": unix socket path is empty`},
		{name: "NUL", in: "/run/a\x00.qmp", wantErr: `invalid socket "/run/a\x00.qmp": unix socket path contains a NUL byte`},
		{name: "108-byte path", in: path108, wantErr: `invalid socket "` + path108 + `": unix socket path is 108 bytes long, but sun_path holds at most 107`},
		{name: "tcp prefix only", in: "tcp:", wantErr: `invalid socket "tcp:": want tcp:HOST:PORT: missing port in address`},
		{name: "tcp no port", in: "tcp:localhost", wantErr: `invalid socket "tcp:localhost": want tcp:HOST:PORT: address localhost: missing port in address`},
		{name: "tcp IPv6 without brackets", in: "tcp:::1:4444", wantErr: `invalid socket "tcp:::1:4444": want tcp:HOST:PORT: address ::1:4444: too many colons in address`},
		{name: "tcp no host", in: "tcp::4444", wantErr: `invalid socket "tcp::4444": missing host, want tcp:HOST:PORT`},
		{name: "tcp empty port", in: "tcp:h:", wantErr: `invalid socket "tcp:h:": port "" is not a number from 1 to 65535`},
		{name: "tcp port 0", in: "tcp:h:0", wantErr: `invalid socket "tcp:h:0": port "0" is not a number from 1 to 65535`},
		{name: "tcp port 65536", in: "tcp:h:65536", wantErr: `invalid socket "tcp:h:65536": port "65536" is not a number from 1 to 65535`},
		{name: "tcp port too many digits", in: "tcp:h:000001", wantErr: `invalid socket "tcp:h:000001": port "000001" is not a number from 1 to 65535`},
		{name: "tcp port sign", in: "tcp:h:+80", wantErr: `invalid socket "tcp:h:+80": port "+80" is not a number from 1 to 65535`},
		{name: "tcp negative port", in: "tcp:h:-1", wantErr: `invalid socket "tcp:h:-1": port "-1" is not a number from 1 to 65535`},
		{name: "tcp service name", in: "tcp:h:qmp", wantErr: `invalid socket "tcp:h:qmp": port "qmp" is not a number from 1 to 65535`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			network, address, err := ParseSocket(tc.in)
			gotErr := ""
			if err != nil {
				gotErr = err.Error()
			}
			if gotErr != tc.wantErr {
				t.Errorf("ParseSocket(%q) error = %q, want %q", tc.in, gotErr, tc.wantErr)
			}
			if network != tc.wantNetwork || address != tc.wantAddress {
				t.Errorf("ParseSocket(%q) = (%q, %q), want (%q, %q)", tc.in, network, address, tc.wantNetwork, tc.wantAddress)
			}
		})
	}
}

func TestEndpoint(t *testing.T) {
	tests := []struct {
		name        string
		vm          VM
		wantNetwork string
		wantAddress string
	}{
		{name: "unix", vm: VM{Socket: "unix:/run/a.qmp"}, wantNetwork: "unix", wantAddress: "/run/a.qmp"},
		{name: "tcp", vm: VM{Socket: "tcp:[::1]:4444"}, wantNetwork: "tcp", wantAddress: "[::1]:4444"},
		{name: "invalid", vm: VM{Socket: "tcp:h:0"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			network, address := tc.vm.Endpoint()
			if network != tc.wantNetwork || address != tc.wantAddress {
				t.Errorf("Endpoint() = (%q, %q), want (%q, %q)", network, address, tc.wantNetwork, tc.wantAddress)
			}
		})
	}
}

func TestDurationRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		in   Duration
		want string
	}{
		{name: "seconds", in: Duration(30 * time.Second), want: "30s\n"},
		{name: "compound", in: Duration(90 * time.Minute), want: "1h30m0s\n"},
		{name: "sub-second", in: Duration(1500 * time.Millisecond), want: "1.5s\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := yaml.Marshal(tc.in)
			if err != nil {
				t.Fatalf("yaml.Marshal: %v", err)
			}
			if diff := cmp.Diff(tc.want, string(out)); diff != "" {
				t.Errorf("yaml.Marshal mismatch (-want +got):\n%s", diff)
			}
			var back Duration
			if err := yaml.Unmarshal(out, &back); err != nil {
				t.Fatalf("yaml.Unmarshal(%q): %v", out, err)
			}
			if back != tc.in {
				t.Errorf("round trip gave %v, want %v", back, tc.in)
			}
		})
	}
}

func TestCheckGlob(t *testing.T) {
	tests := []struct {
		glob string
		ok   bool
	}{
		{"/run/qemu/*.qmp", true},
		{"/run/qemu/vm-?.qmp", true},
		{"/run/[a-z]*/[^.]*.sock", true},
		{`/run/\[literal\]/*.qmp`, true},
		{"/run/[]a]", false},
		{"/run/[a-]", false},
		{"/run/[-a]", false},
		{"/run/[a", false},
		{"/run/[^", false},
		{"/run/x\\", false},
		// filepath.Match(glob, "") misses these: it stops at the first
		// part that does not match the empty name.
		{"/run/*/vm[0-9.qmp", false},
		{"/run/x/[", false},
	}
	for _, tc := range tests {
		t.Run(tc.glob, func(t *testing.T) {
			err := checkGlob(tc.glob)
			if ok := err == nil; ok != tc.ok {
				t.Errorf("checkGlob(%q) = %v, want ok=%v", tc.glob, err, tc.ok)
			}
		})
	}
}

// FuzzCheckGlob checks that checkGlob rejects every pattern that
// filepath.Match can reject.
func FuzzCheckGlob(f *testing.F) {
	for _, s := range []string{"/run/*.qmp", "[a-z]?", `\*`, "[^]]", "*[", "a*b[c-"} {
		f.Add(s, "/run/a.qmp")
	}
	f.Fuzz(func(t *testing.T, pattern, name string) {
		if _, err := filepath.Match(pattern, name); err != nil && checkGlob(pattern) == nil {
			t.Errorf("filepath.Match(%q, %q) = %v, but checkGlob accepts the pattern", pattern, name, err)
		}
	})
}

// FuzzParse checks that Parse never panics, and that a config it accepts
// validates again, unchanged.
//
// It does not round-trip through yaml.Marshal: yaml.v3 writes strings that
// start with a newline as block scalars it cannot read back
// (https://github.com/yaml/go-yaml/issues/76), which is not ours to test.
func FuzzParse(f *testing.F) {
	files, err := filepath.Glob("testdata/*.yml")
	if err != nil {
		f.Fatal(err)
	}
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			return
		}
		again := cloneConfig(c)
		if err := again.validate(); err != nil {
			t.Fatalf("a parsed config fails validation: %v", err)
		}
		if diff := cmp.Diff(c, again); diff != "" {
			t.Fatalf("validating a parsed config changed it (-before +after):\n%s", diff)
		}
		for i, vm := range c.VMs {
			if network, _ := vm.Endpoint(); network == "" {
				t.Errorf("vms[%d] has no endpoint for socket %q", i, vm.Socket)
			}
			if vm.Name == "" {
				t.Errorf("vms[%d] has no name", i)
			}
		}
	})
}

func cloneConfig(c *Config) *Config {
	out := *c
	out.VMs = slices.Clone(c.VMs)
	for i := range out.VMs {
		out.VMs[i].Labels = maps.Clone(c.VMs[i].Labels)
	}
	out.Discovery.SocketGlobs = slices.Clone(c.Discovery.SocketGlobs)
	return &out
}

func TestListenAndGlobalLabels(t *testing.T) {
	c, err := Parse([]byte(`
labels: {site: fra1}
listen:
  - path: /run/qmp_exporter/qmp.sock
  - path: /run/qmp_exporter/other.sock
    mode: "0600"
    allowed_uids: [0, 64055]
  - address: ":4445"
libvirt: {socket: /run/libvirt/libvirt-sock-ro}
discovery:
  socket_globs: ["/run/qemu-server/*.qmp"]
  stale_after: 90s
`))
	if err != nil {
		t.Fatal(err)
	}
	want := &Config{
		Labels: map[string]string{"site": "fra1"},
		Listen: []Listen{
			{Path: "/run/qmp_exporter/qmp.sock", Mode: DefaultListenMode},
			{Path: "/run/qmp_exporter/other.sock", Mode: 0o600, AllowedUIDs: []uint32{0, 64055}},
			{Address: "127.0.0.1:4445", Mode: DefaultListenMode},
		},
		Discovery: Discovery{SocketGlobs: []string{"/run/qemu-server/*.qmp"}, RescanInterval: Duration(DefaultRescanInterval), StaleAfter: Duration(90 * time.Second)},
		Libvirt:   Libvirt{Socket: "/run/libvirt/libvirt-sock-ro"},
	}
	if diff := cmp.Diff(want, c); diff != "" {
		t.Errorf("Parse (-want +got):\n%s", diff)
	}
	for _, tc := range []struct{ in, want string }{
		{"listen: [{}]", "listen[0]: set exactly one of path and address"},
		{"listen: [{path: /a, address: ':1'}]", "listen[0]: set exactly one of path and address"},
		{"listen: [{address: ':1', allowed_uids: [0]}]", "listen[0]: allowed_uids applies to unix sockets (path) only; a TCP listener cannot see the peer's uid"},
		{"listen: [{path: /a, mode: '0999'}]", `line 1: invalid mode "0999", want an octal file mode such as 0660`},
		{"listen: [{address: 'h:0'}]", `listen[0]: invalid address "h:0": port "0" is not a number from 1 to 65535`},
		{"labels: {vm: x}", `labels: label name "vm" is reserved, the exporter sets it to the VM's name`},
		{"discovery: {stale_after: 0s}", "discovery.stale_after: must be greater than 0, got 0s"},
		{"libvirt: {socket: \"a\\0b\"}", "libvirt: socket: unix socket path contains a NUL byte"},
	} {
		_, err := Parse([]byte(tc.in))
		if err == nil || err.Error() != tc.want {
			t.Errorf("Parse(%q) error = %v, want %q", tc.in, err, tc.want)
		}
	}
}
