package systemd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// JournalSocket is the path of journald's native-protocol socket.
const JournalSocket = "/run/systemd/journal/socket"

// NewLogHandler returns the slog handler snpd logs through. When w is a file whose
// device and inode are those named by JOURNAL_STREAM (systemd connected it, normally
// stderr, to the journal) and JournalSocket exists, records go to the journal over its
// native protocol with structured fields (see NewJournalHandler). Otherwise records are
// written to w as plain text (slog.TextHandler). level is the minimum level logged; a
// *slog.LevelVar may be passed to change it later.
func NewLogHandler(w io.Writer, level slog.Leveler) slog.Handler {
	return newLogHandler(w, level, JournalSocket)
}

func newLogHandler(w io.Writer, level slog.Leveler, socket string) slog.Handler {
	if f, ok := w.(*os.File); ok {
		if is, err := isJournalStream(f, os.Getenv("JOURNAL_STREAM")); err == nil && is {
			if h, err := NewJournalHandler(socket, level, w); err == nil {
				return h
			}
		}
	}
	return slog.NewTextHandler(w, &slog.HandlerOptions{Level: level})
}

// isJournalStream reports whether f is the stream JOURNAL_STREAM (value env) names.
func isJournalStream(f *os.File, env string) (bool, error) {
	if env == "" {
		return false, nil
	}
	dev, ino, err := parseJournalStream(env)
	if err != nil {
		return false, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return false, fmt.Errorf("checking JOURNAL_STREAM: %w", err)
	}
	return st.Dev == dev && st.Ino == ino, nil
}

// parseJournalStream parses JOURNAL_STREAM, "<device>:<inode>" in decimal
// (systemd.exec(5)). Written here because go-systemd's StderrIsJournalStream only
// looks at fd 2 and accepts trailing garbage (fmt.Sscanf).
func parseJournalStream(s string) (dev, ino uint64, err error) {
	a, b, ok := strings.Cut(s, ":")
	if !ok {
		return 0, 0, fmt.Errorf("parsing JOURNAL_STREAM=%q: want <device>:<inode>", s)
	}
	if dev, err = parseDecimal(a); err != nil {
		return 0, 0, fmt.Errorf("parsing JOURNAL_STREAM=%q device: %w", s, err)
	}
	if ino, err = parseDecimal(b); err != nil {
		return 0, 0, fmt.Errorf("parsing JOURNAL_STREAM=%q inode: %w", s, err)
	}
	return dev, ino, nil
}

// NewJournalHandler returns a handler that sends each record to the journald
// native-protocol socket at socket (normally JournalSocket) as one entry with the
// fields:
//
//	PRIORITY           syslog priority from the level: debug 7, info 6, warn 4, error 3
//	MESSAGE            the message followed by its attributes as key=value, so
//	                   `journalctl` shows them; newlines are kept (multi-line entries)
//	SYSLOG_IDENTIFIER  the program name (os.Args[0] base name)
//	CODE_FILE, CODE_LINE, CODE_FUNC  where the record was logged, when known
//	VM                 the value of a top-level attribute "vm" (`journalctl VM=web`)
//	SNPD_<KEY>         every other attribute; group names and key joined by "_",
//	                   upper-cased, characters outside A-Z0-9_ replaced by "_"
//
// Entries too large for one datagram are passed in a sealed memfd, as sd_journal_send
// does. If the journal cannot be reached when a record is logged (journald
// restarting), the record is written to fallback as plain text instead; nil fallback
// drops it. It returns an error if socket is not a unix socket.
//
// The go-systemd journal package is not used: its socket path cannot be set (tests
// need a fake journal), it prints to stderr from library code on bad field names, and
// it has no slog handler.
func NewJournalHandler(socket string, level slog.Leveler, fallback io.Writer) (slog.Handler, error) {
	st, err := os.Stat(socket)
	if err != nil {
		return nil, fmt.Errorf("opening the journal: %w", err)
	}
	if st.Mode().Type() != os.ModeSocket {
		return nil, fmt.Errorf("opening the journal: %s is not a socket", socket)
	}
	// An unbound datagram socket (autobind); each record is sent to socket by address,
	// so a restarted journald is reached again without reconnecting.
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("opening the journal: %w", err)
	}
	if level == nil {
		level = slog.LevelInfo
	}
	if fallback == nil {
		fallback = io.Discard
	}
	ident := filepath.Base(os.Args[0])
	return &journalHandler{
		j:     &journalConn{conn: conn, addr: &net.UnixAddr{Name: socket, Net: "unixgram"}},
		level: level,
		ident: ident,
		text:  slog.NewTextHandler(fallback, &slog.HandlerOptions{Level: level}),
	}, nil
}

type journalConn struct {
	conn *net.UnixConn
	addr *net.UnixAddr
}

type journalHandler struct {
	j      *journalConn
	level  slog.Leveler
	ident  string
	groups []string // current WithGroup path
	fields []byte   // fields from WithAttrs, already encoded
	suffix string   // " key=value" text of WithAttrs, for MESSAGE
	text   slog.Handler
}

func (h *journalHandler) Enabled(_ context.Context, l slog.Level) bool {
	return l >= h.level.Level()
}

func (h *journalHandler) clone() *journalHandler {
	c := *h
	c.groups = append([]string(nil), h.groups...)
	c.fields = append([]byte(nil), h.fields...)
	return &c
}

func (h *journalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	if len(as) == 0 {
		return h
	}
	c := h.clone()
	var fb bytes.Buffer
	var tb strings.Builder
	for _, a := range as {
		appendAttr(&fb, &tb, c.groups, a)
	}
	c.fields = append(c.fields, fb.Bytes()...)
	c.suffix += tb.String()
	c.text = h.text.WithAttrs(as)
	return c
}

func (h *journalHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	c := h.clone()
	c.groups = append(c.groups, name)
	c.text = h.text.WithGroup(name)
	return c
}

func (h *journalHandler) Handle(ctx context.Context, r slog.Record) error {
	var fb bytes.Buffer
	var tb strings.Builder
	r.Attrs(func(a slog.Attr) bool {
		appendAttr(&fb, &tb, h.groups, a)
		return true
	})
	var b bytes.Buffer
	appendField(&b, "PRIORITY", strconv.Itoa(priority(r.Level)))
	appendField(&b, "MESSAGE", r.Message+h.suffix+tb.String())
	appendField(&b, "SYSLOG_IDENTIFIER", h.ident)
	if r.PC != 0 {
		fr, _ := runtime.CallersFrames([]uintptr{r.PC}).Next()
		if fr.File != "" {
			appendField(&b, "CODE_FILE", fr.File)
			appendField(&b, "CODE_LINE", strconv.Itoa(fr.Line))
			appendField(&b, "CODE_FUNC", fr.Function)
		}
	}
	b.Write(h.fields)
	b.Write(fb.Bytes())
	if err := h.j.send(b.Bytes()); err != nil {
		if terr := h.text.Handle(ctx, r); terr != nil {
			return errors.Join(err, terr)
		}
		return err
	}
	return nil
}

// priority maps a slog level to a syslog priority (sd-daemon(3)).
func priority(l slog.Level) int {
	switch {
	case l < slog.LevelInfo:
		return 7 // debug
	case l < slog.LevelWarn:
		return 6 // info
	case l < slog.LevelError:
		return 4 // warning
	default:
		return 3 // err
	}
}

// appendAttr encodes attribute a (under groups) as journal fields into fb and as
// " key=value" text into tb.
func appendAttr(fb *bytes.Buffer, tb *strings.Builder, groups []string, a slog.Attr) {
	v := a.Value.Resolve()
	if v.Kind() == slog.KindGroup {
		as := v.Group()
		if len(as) == 0 {
			return
		}
		if a.Key != "" {
			groups = append(append([]string(nil), groups...), a.Key)
		}
		for _, ga := range as {
			appendAttr(fb, tb, groups, ga)
		}
		return
	}
	if a.Key == "" {
		return
	}
	val := v.String()
	path := append(append([]string(nil), groups...), a.Key)
	appendField(fb, fieldName(path), val)
	tb.WriteByte(' ')
	tb.WriteString(strings.Join(path, "."))
	tb.WriteByte('=')
	if needsQuote(val) {
		tb.WriteString(strconv.Quote(val))
	} else {
		tb.WriteString(val)
	}
}

func needsQuote(s string) bool {
	if s == "" {
		return true
	}
	for _, c := range s {
		if c <= ' ' || c == '=' || c == '"' || c == 0x7f || c > 0x7e {
			return true
		}
	}
	return false
}

// maxFieldName is journald's limit on field names.
const maxFieldName = 64

// fieldName turns an attribute path into a journal field name: VM for a top-level
// "vm", else SNPD_<PATH> with A-Z0-9_ only, at most 64 bytes.
func fieldName(path []string) string {
	if len(path) == 1 && path[0] == "vm" {
		return "VM"
	}
	var b strings.Builder
	b.WriteString("SNPD_")
	for i, p := range path {
		if i > 0 {
			b.WriteByte('_')
		}
		for _, c := range p {
			switch {
			case c >= 'a' && c <= 'z':
				b.WriteRune(c - 'a' + 'A')
			case c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
				b.WriteRune(c)
			default:
				b.WriteByte('_')
			}
		}
	}
	s := b.String()
	if len(s) > maxFieldName {
		s = s[:maxFieldName]
	}
	return s
}

// appendField encodes one field in the native protocol (systemd.journal-fields(7),
// "Native Journal Protocol"): NAME=value\n, or for values containing a newline
// NAME\n<64-bit little-endian length><value>\n.
func appendField(b *bytes.Buffer, name, value string) {
	if !strings.ContainsRune(value, '\n') {
		b.WriteString(name)
		b.WriteByte('=')
		b.WriteString(value)
		b.WriteByte('\n')
		return
	}
	b.WriteString(name)
	b.WriteByte('\n')
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(len(value)))
	b.Write(n[:])
	b.WriteString(value)
	b.WriteByte('\n')
}

// send writes one entry, falling back to a sealed memfd passed with SCM_RIGHTS when
// the datagram is too large for the socket.
func (j *journalConn) send(entry []byte) error {
	_, _, err := j.conn.WriteMsgUnix(entry, nil, j.addr)
	if err == nil {
		return nil
	}
	if !errors.Is(err, syscall.EMSGSIZE) && !errors.Is(err, syscall.ENOBUFS) {
		return fmt.Errorf("sending to the journal: %w", err)
	}
	fd, err := unix.MemfdCreate("journal-entry", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return fmt.Errorf("sending a large entry to the journal: creating memfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "journal-entry")
	defer f.Close()
	if _, err := f.Write(entry); err != nil {
		return fmt.Errorf("sending a large entry to the journal: writing memfd: %w", err)
	}
	// journald accepts a memfd only if it is sealed.
	if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_WRITE|unix.F_SEAL_SEAL); err != nil {
		return fmt.Errorf("sending a large entry to the journal: sealing memfd: %w", err)
	}
	if _, _, err := j.conn.WriteMsgUnix(nil, unix.UnixRights(int(f.Fd())), j.addr); err != nil {
		return fmt.Errorf("sending a large entry to the journal: %w", err)
	}
	return nil
}
