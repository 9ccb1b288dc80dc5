// Package config loads and validates the qmp_exporter configuration file.
//
// The file is YAML and lists the QMP sockets to watch, one per VM, and the
// globs that discovery scans for more:
//
//	vms:
//	  - name: web-1                     # optional; see VM.Name
//	    socket: /run/qemu/web-1.qmp     # unix path, unix:PATH or tcp:HOST:PORT
//	    labels: {team: web}             # optional extra labels for this VM's series
//	  - socket: tcp:10.0.0.5:4444
//	discovery:
//	  socket_globs: ["/run/qemu/*.qmp"]
//	  rescan_interval: 30s              # the default
//
// Decoding is strict: an unknown key, a second YAML document or an invalid
// value is an error that says where it is. Every problem found in the VM
// list and the discovery section is reported, not only the first.
//
// The package knows nothing about QMP or metrics; the caller turns a
// Config into whatever its collector needs.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// DefaultRescanInterval is how often discovery rescans its socket globs
// when rescan_interval is not set.
const DefaultRescanInterval = 30 * time.Second

// maxLabelValueLen bounds label values, and VM names, which become the
// value of the vm label.
const maxLabelValueLen = 256

var labelNameRE = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)

// Config is the contents of the configuration file.
type Config struct {
	// VMs are the QMP sockets to watch, one per VM.
	VMs []VM `yaml:"vms"`
	// Discovery finds more sockets by scanning globs.
	Discovery Discovery `yaml:"discovery"`
	// Listen are sockets on which the exporter accepts connections from
	// QEMUs started with a client-mode QMP chardev (reconnect=...).
	Listen []Listen `yaml:"listen"`
	// Libvirt reads every domain of a libvirtd through its socket; off
	// when Socket is empty.
	Libvirt Libvirt `yaml:"libvirt"`
	// Labels are added to every series of every VM; a VM's own labels
	// override them.
	Labels map[string]string `yaml:"labels"`
}

// DefaultStaleAfter is how long a discovered or dialled-in VM may stay
// unreachable before its series are removed.
const DefaultStaleAfter = 5 * time.Minute

// DefaultListenMode is the file mode of a listener socket.
const DefaultListenMode = FileMode(0o660)

// Listen is a socket the exporter listens on for QEMUs that dial in.
type Listen struct {
	// Path is a unix socket to create; Address a TCP address (host:port,
	// or :port for the loopback address). Exactly one must be set.
	Path    string `yaml:"path"`
	Address string `yaml:"address"`
	// Mode is the unix socket's file mode, in octal (default 0660).
	Mode FileMode `yaml:"mode"`
	// AllowedUIDs, if not empty, are the only user ids whose processes
	// may connect to a unix listener (checked with SO_PEERCRED).
	AllowedUIDs []uint32 `yaml:"allowed_uids"`
}

// Libvirt configures the libvirt source.
type Libvirt struct {
	// Socket is libvirtd's socket; the read-only one
	// (/run/libvirt/libvirt-sock-ro) is all the exporter needs.
	Socket string `yaml:"socket"`
}

// FileMode is a unix file mode written in octal, such as "0660".
type FileMode uint32

// UnmarshalYAML reads an octal mode.
func (m *FileMode) UnmarshalYAML(value *yaml.Node) error {
	v, err := strconv.ParseUint(strings.TrimPrefix(value.Value, "0o"), 8, 32)
	if err != nil || v > 0o777 {
		return fmt.Errorf("line %d: invalid mode %q, want an octal file mode such as 0660", value.Line, value.Value)
	}
	*m = FileMode(v)
	return nil
}

// MarshalYAML writes the mode in octal.
func (m FileMode) MarshalYAML() (any, error) { return fmt.Sprintf("%04o", uint32(m)), nil }

// VM is one QEMU VM, reached through its QMP socket.
type VM struct {
	// Name identifies the VM in the vm label. When the file gives none,
	// Parse derives it from the socket: the file's base name without its
	// extension for a unix socket (/run/qemu/web-1.qmp gives web-1), and
	// HOST:PORT for tcp.
	Name string `yaml:"name"`
	// Socket is the QMP monitor to connect to, in the syntax accepted by
	// ParseSocket.
	Socket string `yaml:"socket"`
	// Labels are added to every series of this VM.
	Labels map[string]string `yaml:"labels"`
	// NameFromConfig is true when Name was written in the file, and false
	// when Parse derived it from the socket. A derived name is only a
	// fallback: the exporter prefers the name QEMU reports (-name).
	NameFromConfig bool `yaml:"-"`
}

// Endpoint returns the network ("unix" or "tcp") and address to dial for
// the VM's socket. It is meant for a VM that has been validated, as every
// VM returned by Load and Parse is; for an invalid socket it returns two
// empty strings.
func (v VM) Endpoint() (network, address string) {
	network, address, err := ParseSocket(v.Socket)
	if err != nil {
		return "", ""
	}
	return network, address
}

// Discovery configures the scanning of globs for QMP sockets.
type Discovery struct {
	// SocketGlobs are patterns in the syntax of path/filepath.Match.
	// Every socket matching one of them is watched as a VM with a derived
	// name.
	SocketGlobs []string `yaml:"socket_globs"`
	// RescanInterval is the time between two scans of SocketGlobs. It
	// defaults to DefaultRescanInterval and must be positive.
	RescanInterval Duration `yaml:"rescan_interval"`
	// StaleAfter is how long a discovered VM (or one that dialled in) may
	// stay unreachable before its series are removed. It defaults to
	// DefaultStaleAfter.
	StaleAfter Duration `yaml:"stale_after"`
}

// Duration is a time.Duration written in YAML as a Go duration string,
// such as "30s", "5m" or "1h30m".
type Duration time.Duration

// UnmarshalYAML implements yaml.Unmarshaler. It accepts a scalar that
// time.ParseDuration understands.
func (d *Duration) UnmarshalYAML(value *yaml.Node) error {
	// Returning a *yaml.TypeError lets the decoder carry on and report
	// this problem together with the others it finds.
	if value.Kind != yaml.ScalarNode {
		return &yaml.TypeError{Errors: []string{
			fmt.Sprintf("line %d: cannot unmarshal %s into a duration", value.Line, value.ShortTag()),
		}}
	}
	v, err := time.ParseDuration(value.Value)
	if err != nil {
		return &yaml.TypeError{Errors: []string{
			fmt.Sprintf("line %d: invalid duration %q, want a number and a unit such as \"30s\", \"5m\" or \"1h30m\"", value.Line, value.Value),
		}}
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML implements yaml.Marshaler, writing the duration as a string
// that UnmarshalYAML reads back.
func (d Duration) MarshalYAML() (any, error) {
	return d.String(), nil
}

// String returns the duration formatted by time.Duration.String.
func (d Duration) String() string {
	return time.Duration(d).String()
}

// Load reads and parses the configuration file at path. Its errors, all of
// the form `error parsing config file "PATH": ...`, are meant to be shown
// to the user as they are.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err == nil {
		var c *Config
		if c, err = Parse(data); err == nil {
			return c, nil
		}
	}
	return nil, fmt.Errorf("error parsing config file %q: %w", path, err)
}

// Parse decodes and validates a configuration file's contents, fills in
// the defaults and derives the names of VMs that have none. Empty input
// gives an empty configuration with the defaults.
func Parse(data []byte) (*Config, error) {
	// Defaults are set before decoding, and checks run after it, rather
	// than in UnmarshalYAML methods on Config, VM and Discovery: the
	// checks need the whole list (indices, duplicates), yaml.v3's
	// Node.Decode drops KnownFields, and the `type plain T` workaround
	// would put "config.plain" into unknown-key errors.
	c := &Config{Discovery: Discovery{RescanInterval: Duration(DefaultRescanInterval), StaleAfter: Duration(DefaultStaleAfter)}}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	switch err := dec.Decode(c); {
	case errors.Is(err, io.EOF):
		return c, nil // no document at all: only comments, or nothing
	case err != nil:
		return nil, err
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case errors.Is(err, io.EOF):
	case err != nil:
		return nil, err
	default:
		return nil, fmt.Errorf("yaml: line %d: a second YAML document starts here, but the file must hold only one", next.Line)
	}
	for i := range c.VMs {
		c.VMs[i].NameFromConfig = c.VMs[i].Name != ""
	}
	for i := range c.Listen {
		if c.Listen[i].Mode == 0 {
			c.Listen[i].Mode = DefaultListenMode
		}
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// validate checks c, derives the names of VMs that have none, and returns
// every problem it finds joined into one error. It is idempotent, so a
// Config it accepted passes again unchanged.
func (c *Config) validate() error {
	var errs []error
	names := map[string]int{}   // name → index of its first VM
	sockets := map[string]int{} // socketKey → index of its first VM
	for i := range c.VMs {
		v := &c.VMs[i]
		vmErrs := v.validate()
		if v.Name != "" {
			if j, ok := names[v.Name]; ok {
				vmErrs = append(vmErrs, fmt.Errorf("duplicate name, also used by vms[%d]", j))
			} else {
				names[v.Name] = i
			}
		}
		if network, address, err := ParseSocket(v.Socket); err == nil {
			key := socketKey(network, address)
			if j, ok := sockets[key]; ok {
				vmErrs = append(vmErrs, fmt.Errorf("duplicate socket %q, also used by vms[%d]", v.Socket, j))
			} else {
				sockets[key] = i
			}
		}
		for _, err := range vmErrs {
			errs = append(errs, fmt.Errorf("%s: %w", v.describe(i), err))
		}
	}
	errs = append(errs, c.Discovery.validate()...)
	if c.Libvirt.Socket != "" {
		if err := checkUnixPath(c.Libvirt.Socket); err != nil {
			errs = append(errs, fmt.Errorf("libvirt: socket: %w", err))
		}
	}
	for i := range c.Listen {
		if err := c.Listen[i].validate(); err != nil {
			errs = append(errs, fmt.Errorf("listen[%d]: %w", i, err))
		}
	}
	for _, name := range slices.Sorted(maps.Keys(c.Labels)) {
		if err := checkLabel(name, c.Labels[name]); err != nil {
			errs = append(errs, fmt.Errorf("labels: %w", err))
		}
	}
	return errors.Join(errs...)
}

func (l *Listen) validate() error {
	switch {
	case (l.Path == "") == (l.Address == ""):
		return errors.New("set exactly one of path and address")
	case l.Path != "":
		return checkUnixPath(l.Path)
	case len(l.AllowedUIDs) > 0:
		// A TCP peer has no uid to check: every connection would be refused.
		return errors.New("allowed_uids applies to unix sockets (path) only; a TCP listener cannot see the peer's uid")
	}
	host, port, err := net.SplitHostPort(l.Address)
	if err != nil {
		return fmt.Errorf("invalid address %q: %w", l.Address, err)
	}
	if _, err := parsePort(port); err != nil {
		return fmt.Errorf("invalid address %q: %w", l.Address, err)
	}
	if host == "" {
		l.Address = net.JoinHostPort("127.0.0.1", port)
	}
	return nil
}

// validate checks the VM's own fields and derives its name if it has none.
func (v *VM) validate() []error {
	var errs []error
	if v.Name != "" {
		if err := checkValue(v.Name); err != nil {
			errs = append(errs, fmt.Errorf("invalid name: %w", err))
		}
	}
	if v.Socket == "" {
		errs = append(errs, errors.New("socket is required"))
	} else if network, address, err := ParseSocket(v.Socket); err != nil {
		errs = append(errs, err)
	} else if v.Name == "" {
		name := deriveName(network, address)
		if err := checkValue(name); name == "" || err != nil {
			errs = append(errs, fmt.Errorf("cannot derive a valid name from socket %q, set one with name", v.Socket))
		} else {
			v.Name = name
		}
	}
	for _, name := range slices.Sorted(maps.Keys(v.Labels)) {
		if err := checkLabel(name, v.Labels[name]); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// describe names the VM in error messages.
func (v *VM) describe(i int) string {
	switch {
	case v.Name == "":
		return fmt.Sprintf("vms[%d]", i)
	case v.NameFromConfig:
		return fmt.Sprintf("vms[%d] (name %q)", i, v.Name)
	default:
		return fmt.Sprintf("vms[%d] (derived name %q)", i, v.Name)
	}
}

func (d *Discovery) validate() []error {
	var errs []error
	for i, glob := range d.SocketGlobs {
		if glob == "" {
			errs = append(errs, fmt.Errorf("discovery.socket_globs[%d]: glob is empty", i))
		} else if err := checkGlob(glob); err != nil {
			errs = append(errs, fmt.Errorf("discovery.socket_globs[%d]: invalid glob %q: %w", i, glob, err))
		}
	}
	if d.RescanInterval <= 0 {
		errs = append(errs, fmt.Errorf("discovery.rescan_interval: must be greater than 0, got %s", d.RescanInterval))
	}
	if d.StaleAfter <= 0 {
		errs = append(errs, fmt.Errorf("discovery.stale_after: must be greater than 0, got %s", d.StaleAfter))
	}
	return errs
}

func checkLabel(name, value string) error {
	switch {
	case !labelNameRE.MatchString(name):
		return fmt.Errorf("invalid label name %q, must match %s", name, labelNameRE)
	case strings.HasPrefix(name, "__"):
		return fmt.Errorf("invalid label name %q, names starting with __ are reserved for Prometheus", name)
	case name == "vm":
		return errors.New(`label name "vm" is reserved, the exporter sets it to the VM's name`)
	case name == "instance" || name == "job":
		return fmt.Errorf("label name %q is reserved, Prometheus sets it", name)
	}
	if err := checkValue(value); err != nil {
		return fmt.Errorf("invalid value for label %q: %w", name, err)
	}
	return nil
}

// checkValue checks a label value (or a VM name, the value of vm).
func checkValue(s string) error {
	if !utf8.ValidString(s) {
		return errors.New("not valid UTF-8")
	}
	if len(s) > maxLabelValueLen {
		return fmt.Errorf("%d bytes long, longer than the limit of %d", len(s), maxLabelValueLen)
	}
	return nil
}
