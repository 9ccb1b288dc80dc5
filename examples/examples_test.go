// Package examples_test checks the example files of the recipes in
// docs/recipes.md: every YAML file loads with the exporter's own parser,
// the libvirt and Proxmox snippets make QEMU dial the listener of their
// configuration, and the systemd unit keeps its hardening. The snippets'
// arguments themselves are run on a real QEMU by TestFleetEndToEnd in
// cmd/qmp_exporter.
package examples_test

import (
	"bufio"
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qmp-exporter/qmp_exporter/config"
)

// listenerPath is the listener socket of the recipes that use one: inside
// the systemd unit's RuntimeDirectory.
const listenerPath = "/run/qmp_exporter/qmp.sock"

// foreignMonitors are sockets that belong to a management stack and serve
// one client at a time: no example may list or glob them.
var foreignMonitors = []string{
	"/var/run/qemu-server/100.qmp",                    // Proxmox VE: qm, the GUI
	"/run/qemu-server/100.qmp",                        // the same, /var/run being /run
	"/var/run/qmeventd.sock",                          // Proxmox VE: qmeventd's listener
	"/run/qmeventd.sock",                              // the same
	"/var/lib/libvirt/qemu/domain-1-web/monitor.sock", // libvirt's monitor
}

// TestConfigs loads every YAML file under examples/ with config.Load and
// checks the fields its recipe relies on. A new file must come with its
// checks.
func TestConfigs(t *testing.T) {
	checks := map[string]func(*testing.T, *config.Config){
		"plain-qemu.yml": func(t *testing.T, c *config.Config) {
			if want := []string{"/run/vm-qmp/*.qmp"}; !slices.Equal(c.Discovery.SocketGlobs, want) {
				t.Errorf("socket_globs = %q, want %q", c.Discovery.SocketGlobs, want)
			}
			if len(c.VMs) == 0 || len(c.Listen) != 0 {
				t.Errorf("want listed VMs and no listener, got %d VMs and %d listeners", len(c.VMs), len(c.Listen))
			}
			// The first listed VM is also matched by the glob: the example
			// shows that it is then watched once, with its listed name.
			if len(c.VMs) > 0 {
				if ok, _ := filepath.Match(c.Discovery.SocketGlobs[0], c.VMs[0].Socket); !ok || !c.VMs[0].NameFromConfig {
					t.Errorf("vms[0] = %+v, want a named VM whose socket the glob matches", c.VMs[0])
				}
			}
			wantStale(t, c, 10*time.Minute)
		},
		"listener.yml": func(t *testing.T, c *config.Config) {
			wantListener(t, c, 0)
			if len(c.Labels) == 0 {
				t.Error("no global labels")
			}
			wantStale(t, c, 10*time.Minute)
		},
		"libvirt.yml": func(t *testing.T, c *config.Config) {
			wantListener(t, c, 64055) // libvirt-qemu on Debian and Ubuntu
			if len(c.VMs) != 0 || len(c.Discovery.SocketGlobs) != 0 {
				t.Error("the libvirt recipe needs no VM list or glob")
			}
		},
		"libvirt-readonly.yml": func(t *testing.T, c *config.Config) {
			if c.Libvirt.Socket != "/run/libvirt/libvirt-sock-ro" {
				t.Errorf("libvirt.socket = %q, want libvirt's read-only socket", c.Libvirt.Socket)
			}
			if len(c.VMs) != 0 || len(c.Discovery.SocketGlobs) != 0 || len(c.Listen) != 0 {
				t.Error("the read-only libvirt recipe needs no VM list, glob or listener")
			}
			wantStale(t, c, 10*time.Minute)
		},
		"proxmox.yml": func(t *testing.T, c *config.Config) {
			wantListener(t, c, 0) // Proxmox runs QEMU as root
			if len(c.VMs) != 0 || len(c.Discovery.SocketGlobs) != 0 {
				t.Error("the Proxmox recipe needs no VM list or glob")
			}
		},
	}
	files := filesNamed(t, ".yml", ".yaml")
	for _, name := range files {
		t.Run(name, func(t *testing.T) {
			c, err := config.Load(name)
			if err != nil {
				t.Fatal(err)
			}
			check := checks[name]
			if check == nil {
				t.Fatalf("no checks for %s: add them to TestConfigs", name)
			}
			check(t, c)
			checkPaths(t, c)
		})
	}
	for name := range checks {
		if !slices.Contains(files, name) {
			t.Errorf("%s is checked but missing", name)
		}
	}
}

func wantListener(t *testing.T, c *config.Config, uid uint32) {
	t.Helper()
	if len(c.Listen) != 1 {
		t.Fatalf("%d listeners, want 1", len(c.Listen))
	}
	l := c.Listen[0]
	if l.Path != listenerPath || l.Mode != 0o660 || !slices.Equal(l.AllowedUIDs, []uint32{uid}) {
		t.Errorf("listen[0] = %+v, want path %s, mode 0660, allowed_uids [%d]", l, listenerPath, uid)
	}
}

func wantStale(t *testing.T, c *config.Config, d time.Duration) {
	t.Helper()
	if got := time.Duration(c.Discovery.StaleAfter); got != d {
		t.Errorf("stale_after = %s, want %s", got, d)
	}
}

// checkPaths checks every socket, glob and listener of a configuration
// against the systemd unit (PrivateTmp and ProtectHome hide /tmp and
// /home) and the management stacks' own monitors.
func checkPaths(t *testing.T, c *config.Config) {
	t.Helper()
	var paths []string
	for _, vm := range c.VMs {
		if network, address := vm.Endpoint(); network == "unix" {
			paths = append(paths, address)
			if slices.Contains(foreignMonitors, address) {
				t.Errorf("vm %s uses %s, a management stack's own monitor", vm.Name, address)
			}
		}
	}
	for _, g := range c.Discovery.SocketGlobs {
		paths = append(paths, g)
		for _, m := range foreignMonitors {
			if ok, _ := filepath.Match(g, m); ok {
				t.Errorf("glob %s matches %s, a management stack's own monitor", g, m)
			}
		}
	}
	for _, l := range c.Listen {
		if l.Path != "" {
			paths = append(paths, l.Path)
		}
	}
	for _, p := range paths {
		for _, hidden := range []string{"/tmp/", "/var/tmp/", "/home/", "/root/"} {
			if strings.HasPrefix(p, hidden) {
				t.Errorf("%s is in %s, which the systemd unit hides from the exporter", p, hidden)
			}
		}
	}
}

// TestLibvirtSnippet checks that the domain XML snippet is well-formed,
// declares the qemu namespace and makes QEMU dial libvirt.yml's listener.
func TestLibvirtSnippet(t *testing.T) {
	data, err := os.ReadFile("libvirt/domain-snippet.xml")
	if err != nil {
		t.Fatal(err)
	}
	// Well-formed: the whole file, not only its first element.
	d := xml.NewDecoder(bytes.NewReader(data))
	for {
		if _, err := d.Token(); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("not well-formed XML: %v", err)
		}
	}
	const ns = "http://libvirt.org/schemas/domain/qemu/1.0"
	var dom struct {
		XMLName     xml.Name
		Commandline []struct {
			Args []struct {
				Value string `xml:"value,attr"`
			} `xml:"http://libvirt.org/schemas/domain/qemu/1.0 arg"`
		} `xml:"http://libvirt.org/schemas/domain/qemu/1.0 commandline"`
	}
	if err := xml.Unmarshal(data, &dom); err != nil {
		t.Fatal(err)
	}
	if dom.XMLName.Local != "domain" {
		t.Errorf("root element %q, want domain", dom.XMLName.Local)
	}
	// encoding/xml resolves a declared prefix to its namespace; an
	// undeclared qemu: prefix would leave Commandline empty.
	if len(dom.Commandline) != 1 {
		t.Fatalf("%d <qemu:commandline> elements in namespace %s, want 1", len(dom.Commandline), ns)
	}
	var args []string
	for _, a := range dom.Commandline[0].Args {
		args = append(args, a.Value)
	}
	checkMonitorArgs(t, args, loadListener(t, "libvirt.yml"))
	checkInRecipes(t, args)
}

// TestProxmoxSnippet checks that the args: line makes QEMU dial
// proxmox.yml's listener and leaves Proxmox's own sockets alone.
func TestProxmoxSnippet(t *testing.T) {
	data, err := os.ReadFile("proxmox/vmid.conf.snippet")
	if err != nil {
		t.Fatal(err)
	}
	var args []string
	found := 0
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if rest, ok := strings.CutPrefix(line, "args:"); ok {
			found++
			args = strings.Fields(rest)
		} else if line != "" {
			// A '#' line would become part of the VM's description.
			t.Errorf("unexpected line %q: the snippet is one args: line", line)
		}
	}
	if found != 1 {
		t.Fatalf("%d args: lines, want 1 (Proxmox takes one per VM)", found)
	}
	for _, own := range []string{"qemu-server", "qmeventd"} {
		if bytes.Contains(data, []byte(own)) {
			t.Errorf("the snippet mentions %s: Proxmox's own sockets must stay untouched", own)
		}
	}
	checkMonitorArgs(t, args, loadListener(t, "proxmox.yml"))
	checkInRecipes(t, []string{"args: " + strings.Join(args, " ")})
}

// loadListener returns the path of the one listener of a configuration.
func loadListener(t *testing.T, name string) string {
	t.Helper()
	c, err := config.Load(name)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Listen) != 1 || c.Listen[0].Path == "" {
		t.Fatalf("%s: want one unix listener, got %+v", name, c.Listen)
	}
	return c.Listen[0].Path
}

// checkMonitorArgs checks "-chardev socket,... -mon ...": a client chardev
// to path that reconnects, and a QMP monitor on it.
func checkMonitorArgs(t *testing.T, args []string, path string) {
	t.Helper()
	if len(args) != 4 || args[0] != "-chardev" || args[2] != "-mon" {
		t.Fatalf("args = %q, want -chardev OPTIONS -mon OPTIONS", args)
	}
	kind, chardev := qemuOpts(args[1])
	if kind != "socket" {
		t.Errorf("chardev backend %q, want socket", kind)
	}
	if chardev["path"] != path {
		t.Errorf("chardev path %q, want the listener %s", chardev["path"], path)
	}
	if v, ok := chardev["server"]; ok && v != "off" {
		t.Errorf("chardev server=%s: QEMU must dial the exporter (a client chardev)", v)
	}
	r, ms := chardev["reconnect"], chardev["reconnect-ms"]
	if n, err := strconv.Atoi(r + ms); (r == "") == (ms == "") || err != nil || n <= 0 {
		t.Errorf("chardev %q: want exactly one of reconnect=SECONDS (QEMU before 9.2) and reconnect-ms=MILLISECONDS", args[1])
	}
	// Ids the management stacks use for their own monitors.
	if id := chardev["id"]; id == "" || slices.Contains([]string{"qmp", "qmp-event", "charmonitor"}, id) {
		t.Errorf("chardev id %q: want one of the exporter's own", id)
	}
	_, mon := qemuOpts("x," + args[3])
	if mon["chardev"] != chardev["id"] || mon["mode"] != "control" {
		t.Errorf("-mon %q, want chardev=%s,mode=control", args[3], chardev["id"])
	}
}

// qemuOpts splits QEMU's "value,key=value,..." syntax (without the ",,"
// escape, which the recipes do not need).
func qemuOpts(s string) (string, map[string]string) {
	parts := strings.Split(s, ",")
	m := map[string]string{}
	for _, p := range parts[1:] {
		k, v, _ := strings.Cut(p, "=")
		m[k] = v
	}
	return parts[0], m
}

// checkInRecipes checks that docs/recipes.md shows the snippet's text as
// it is, so the two cannot drift apart.
func checkInRecipes(t *testing.T, want []string) {
	t.Helper()
	doc, err := os.ReadFile("../docs/recipes.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range want {
		if !bytes.Contains(doc, []byte(w)) {
			t.Errorf("docs/recipes.md does not show %q", w)
		}
	}
}

// TestSystemdUnit checks the unit's user, runtime directory, reload and
// hardening, and runs systemd-analyze verify on it when it is installed.
func TestSystemdUnit(t *testing.T) {
	const unit = "systemd/qmp_exporter.service"
	data, err := os.ReadFile(unit)
	if err != nil {
		t.Fatal(err)
	}
	service := unitSection(t, data, "Service")
	want := map[string]string{
		"User":                    "qmp-exporter",
		"Group":                   "qmp-exporter",
		"RuntimeDirectory":        "qmp_exporter",
		"RuntimeDirectoryMode":    "0750",
		"ReadWritePaths":          "/run/qmp_exporter",
		"ExecReload":              "/bin/kill -HUP $MAINPID",
		"NoNewPrivileges":         "yes",
		"ProtectSystem":           "strict",
		"ProtectHome":             "yes",
		"PrivateTmp":              "yes",
		"ProtectKernelTunables":   "yes",
		"ProtectKernelModules":    "yes",
		"RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
		"CapabilityBoundingSet":   "",
	}
	for k, v := range want {
		if got, ok := service[k]; !ok || !slices.Equal(got, []string{v}) {
			t.Errorf("[Service] %s = %q (set: %v), want exactly %q", k, got, ok, v)
		}
	}
	// SO_PEERCRED would report the overflow uid, and allowed_uids would
	// refuse every QEMU.
	if v := service["PrivateUsers"]; len(v) > 0 && v[len(v)-1] != "no" {
		t.Errorf("PrivateUsers=%s breaks allowed_uids", v[len(v)-1])
	}
	if got := "/run/" + service["RuntimeDirectory"][0] + "/"; !strings.HasPrefix(listenerPath, got) {
		t.Errorf("the listener %s is not in the runtime directory %s", listenerPath, got)
	}

	execStart := service["ExecStart"]
	if len(execStart) != 1 {
		t.Fatalf("ExecStart = %q, want one command", execStart)
	}
	argv := strings.Fields(execStart[0])
	if !filepath.IsAbs(argv[0]) || filepath.Base(argv[0]) != "qmp_exporter" {
		t.Errorf("ExecStart runs %q, want an absolute path to qmp_exporter", argv[0])
	}
	var cfg string
	for i, a := range argv[1:] {
		if v, ok := strings.CutPrefix(a, "--config.file="); ok {
			cfg = v
		} else if a == "--config.file" && i+2 < len(argv) {
			cfg = argv[i+2]
		}
	}
	if !filepath.IsAbs(cfg) || !strings.HasPrefix(cfg, "/etc/") {
		t.Errorf("ExecStart %q: want --config.file with an absolute path under /etc", execStart[0])
	}

	t.Run("systemd-analyze verify", func(t *testing.T) {
		sa, err := exec.LookPath("systemd-analyze")
		if err != nil {
			t.Skipf("systemd-analyze not installed: %v", err)
		}
		// verify wants ExecStart's binary to exist: run it against a copy
		// naming this test binary instead.
		self, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		copyPath := filepath.Join(t.TempDir(), "qmp_exporter.service")
		if err := os.WriteFile(copyPath, bytes.Replace(data, []byte(argv[0]+" "), []byte(self+" "), 1), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(sa, "verify", "--man=no", copyPath).CombinedOutput()
		if err != nil {
			t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
		}
		// It exits 0 on unknown keys and bad values, which it only prints.
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if strings.Contains(line, "qmp_exporter.service") {
				t.Errorf("systemd-analyze verify: %s", line)
			} else if line != "" {
				t.Logf("systemd-analyze verify (not about the unit): %s", line)
			}
		}
	})
}

// unitSection returns the settings of one section of a unit file, each key
// with its values in order. Lines continued with a backslash are joined.
func unitSection(t *testing.T, data []byte, name string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	in := false
	var cont string
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if strings.HasSuffix(line, "\\") {
			cont += strings.TrimSuffix(line, "\\") + " "
			continue
		}
		line, cont = cont+line, ""
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[':
			in = line == "["+name+"]"
		case in:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("malformed line %q", line)
			}
			out[strings.TrimSpace(k)] = append(out[strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	return out
}

// filesNamed lists the files under examples/ with one of the extensions,
// as slash-separated paths relative to it.
func filesNamed(t *testing.T, exts ...string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && slices.Contains(exts, filepath.Ext(p)) {
			out = append(out, filepath.ToSlash(p))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
