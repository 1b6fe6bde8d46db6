// Package systemdtest helps test systemd integration on machines where systemd is not
// the init.
//
// Fakes of the two systemd sockets a service talks to: a notify socket (sd_notify(3)
// receiver, like NOTIFY_SOCKET) and a journal socket speaking journald's native
// protocol. Both are real unix datagram sockets in t.TempDir(); they record the sender's
// credentials and decode messages exactly as systemd would receive them.
//
// A real systemd for what cannot be faked (transient scopes and their cgroups,
// systemd-machined): Container boots Debian's systemd as PID 1 of a systemd-nspawn
// container (scripts/systemd-container.sh), once per test binary; RunTest runs a test
// again inside it, where the system bus is that systemd's. ReadCgroupLimits reads back
// from cgroupfs the limits systemd applied to a unit's cgroup (v1 or v2).
package systemdtest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// maxDatagram is the receive buffer per message (journald accepts entries up to this
// size in one datagram; larger ones come as a memfd).
const maxDatagram = 1 << 20

// listen creates a unixgram socket at path with SO_PASSCRED on, so each message
// carries the sender's pid, uid and gid.
func listen(t testing.TB, path string) *net.UnixConn {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatalf("listening on %s: %v", path, err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.SetReadBuffer(4 << 20); err != nil {
		t.Fatalf("setting receive buffer: %v", err)
	}
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
	}); err != nil || serr != nil {
		t.Fatalf("setting SO_PASSCRED: %v %v", err, serr)
	}
	return c
}

// Message is one datagram received by a fake socket.
type Message struct {
	Data []byte        // payload as sent
	Cred *unix.Ucred   // sender's pid/uid/gid (SCM_CREDENTIALS); nil if absent
	FDs  []int         // descriptors passed with SCM_RIGHTS (owned by the receiver)
	From *net.UnixAddr // sender address (usually autobound or unnamed)
}

func receive(c *net.UnixConn, timeout time.Duration) (Message, error) {
	buf := make([]byte, maxDatagram)
	oob := make([]byte, unix.CmsgSpace(unix.SizeofUcred)+unix.CmsgSpace(4*8))
	if err := c.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return Message{}, err
	}
	n, oobn, _, from, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return Message{}, fmt.Errorf("receiving: %w", err)
	}
	m := Message{Data: buf[:n:n], From: from}
	cmsgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return Message{}, fmt.Errorf("parsing control messages: %w", err)
	}
	for _, cm := range cmsgs {
		if cm.Header.Level != unix.SOL_SOCKET {
			continue
		}
		switch cm.Header.Type {
		case unix.SCM_CREDENTIALS:
			if cr, err := unix.ParseUnixCredentials(&cm); err == nil {
				m.Cred = cr
			}
		case unix.SCM_RIGHTS:
			if fds, err := unix.ParseUnixRights(&cm); err == nil {
				m.FDs = append(m.FDs, fds...)
			}
		}
	}
	return m, nil
}

// NotifySocket is a fake service-manager notify socket. Point the code under test at
// it by setting NOTIFY_SOCKET=Path (t.Setenv, or a child's environment).
type NotifySocket struct {
	Path string // socket file in t.TempDir()
	c    *net.UnixConn
}

// NewNotifySocket creates a notify socket in t.TempDir(); it is closed when t ends.
func NewNotifySocket(t testing.TB) *NotifySocket {
	t.Helper()
	p := filepath.Join(t.TempDir(), "notify.sock")
	return &NotifySocket{Path: p, c: listen(t, p)}
}

// Notification is one sd_notify datagram: its newline-separated assignments and the
// sender's credentials.
type Notification struct {
	State []string    // e.g. ["READY=1", "STATUS=ok"], in order
	Cred  *unix.Ucred // sender; systemd's NotifyAccess=main compares Cred.Pid with MainPID
}

// Has reports whether the notification contains the assignment kv ("READY=1").
func (n Notification) Has(kv string) bool {
	for _, s := range n.State {
		if s == kv {
			return true
		}
	}
	return false
}

// Get returns the value of key in the notification ("STATUS") and whether it is set.
func (n Notification) Get(key string) (string, bool) {
	for _, s := range n.State {
		if k, v, ok := strings.Cut(s, "="); ok && k == key {
			return v, true
		}
	}
	return "", false
}

// Next returns the next notification, or an error after timeout.
func (s *NotifySocket) Next(timeout time.Duration) (Notification, error) {
	m, err := receive(s.c, timeout)
	if err != nil {
		return Notification{}, err
	}
	for _, fd := range m.FDs {
		unix.Close(fd) // FDSTORE=1 is not modelled
	}
	return Notification{State: strings.Split(strings.TrimSuffix(string(m.Data), "\n"), "\n"), Cred: m.Cred}, nil
}

// WaitFor returns the first notification containing kv, skipping others, or an error
// after timeout.
func (s *NotifySocket) WaitFor(kv string, timeout time.Duration) (Notification, error) {
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return Notification{}, fmt.Errorf("no %s within %v", kv, timeout)
		}
		n, err := s.Next(left)
		if err != nil {
			return Notification{}, fmt.Errorf("waiting for %s: %w", kv, err)
		}
		if n.Has(kv) {
			return n, nil
		}
	}
}

// Journal is a fake journald native-protocol socket. Point the code under test at
// Path.
type Journal struct {
	Path string // socket file in t.TempDir()
	c    *net.UnixConn
}

// NewJournal creates a journal socket in t.TempDir(); it is closed when t ends.
func NewJournal(t testing.TB) *Journal {
	t.Helper()
	p := filepath.Join(t.TempDir(), "journal.sock")
	return &Journal{Path: p, c: listen(t, p)}
}

// Entry is one journal entry as journald would store it.
type Entry struct {
	Fields map[string]string // field name -> value (last one wins if repeated)
	Memfd  bool              // arrived in a memfd passed with SCM_RIGHTS (large entry)
	Sealed bool              // that memfd had F_SEAL_WRITE, F_SEAL_GROW and F_SEAL_SHRINK
	Cred   *unix.Ucred       // sender
}

// Next returns the next entry, or an error after timeout or if it is malformed.
func (j *Journal) Next(timeout time.Duration) (Entry, error) {
	m, err := receive(j.c, timeout)
	if err != nil {
		return Entry{}, err
	}
	e := Entry{Cred: m.Cred}
	data := m.Data
	if len(m.FDs) > 0 {
		defer func() {
			for _, fd := range m.FDs {
				unix.Close(fd)
			}
		}()
		if len(m.FDs) != 1 || len(data) != 0 {
			return Entry{}, fmt.Errorf("want one descriptor and no data, got %d and %d bytes", len(m.FDs), len(data))
		}
		seals, err := unix.FcntlInt(uintptr(m.FDs[0]), unix.F_GET_SEALS, 0)
		if err != nil {
			return Entry{}, fmt.Errorf("getting seals: %w", err)
		}
		want := unix.F_SEAL_WRITE | unix.F_SEAL_GROW | unix.F_SEAL_SHRINK
		e.Memfd, e.Sealed = true, seals&want == want
		f := os.NewFile(uintptr(m.FDs[0]), "entry")
		m.FDs = nil
		defer f.Close()
		var b bytes.Buffer
		if _, err := io.Copy(&b, io.NewSectionReader(f, 0, 1<<30)); err != nil {
			return Entry{}, fmt.Errorf("reading memfd: %w", err)
		}
		data = b.Bytes()
	}
	fields, err := DecodeEntry(data)
	if err != nil {
		return Entry{}, err
	}
	e.Fields = fields
	return e, nil
}

// DecodeEntry decodes one entry in journald's native protocol
// (systemd.journal-fields(7)): lines NAME=value, or NAME\n followed by a 64-bit
// little-endian length, the value and a newline. Field names must be 1-64 characters
// of A-Z, 0-9 and _, not starting with a digit (names starting with _ are trusted
// fields journald adds itself and are refused from clients).
func DecodeEntry(b []byte) (map[string]string, error) {
	fields := map[string]string{}
	for len(b) > 0 {
		nl := bytes.IndexByte(b, '\n')
		if nl < 0 {
			return nil, errors.New("decoding journal entry: field without a newline")
		}
		line := b[:nl]
		if eq := bytes.IndexByte(line, '='); eq >= 0 {
			name := string(line[:eq])
			if err := checkFieldName(name); err != nil {
				return nil, err
			}
			fields[name] = string(line[eq+1:])
			b = b[nl+1:]
			continue
		}
		name := string(line)
		if err := checkFieldName(name); err != nil {
			return nil, err
		}
		b = b[nl+1:]
		if len(b) < 8 {
			return nil, fmt.Errorf("decoding journal entry: field %s: truncated length", name)
		}
		n := binary.LittleEndian.Uint64(b[:8])
		b = b[8:]
		if n >= uint64(len(b)) {
			return nil, fmt.Errorf("decoding journal entry: field %s: length %d exceeds the %d bytes left", name, n, len(b))
		}
		if b[n] != '\n' {
			return nil, fmt.Errorf("decoding journal entry: field %s: value not followed by a newline", name)
		}
		fields[name] = string(b[:n])
		b = b[n+1:]
	}
	if len(fields) == 0 {
		return nil, errors.New("decoding journal entry: no fields")
	}
	return fields, nil
}

func checkFieldName(s string) error {
	if s == "" || len(s) > 64 {
		return fmt.Errorf("decoding journal entry: field name %q: want 1 to 64 characters", s)
	}
	if s[0] == '_' || (s[0] >= '0' && s[0] <= '9') {
		return fmt.Errorf("decoding journal entry: field name %q starts with _ or a digit", s)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'A' || c > 'Z') && (c < '0' || c > '9') && c != '_' {
			return fmt.Errorf("decoding journal entry: field name %q has characters other than A-Z, 0-9, _", s)
		}
	}
	return nil
}
