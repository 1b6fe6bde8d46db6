package systemd

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/snpd/snpd/systemd/systemdtest"
	"golang.org/x/sys/unix"
)

func newTestJournal(t *testing.T, level slog.Leveler) (*systemdtest.Journal, slog.Handler, *bytes.Buffer) {
	t.Helper()
	j := systemdtest.NewJournal(t)
	var fallback bytes.Buffer
	h, err := NewJournalHandler(j.Path, level, &fallback)
	if err != nil {
		t.Fatal(err)
	}
	return j, h, &fallback
}

func TestJournalHandlerFields(t *testing.T) {
	j, h, fallback := newTestJournal(t, slog.LevelDebug)
	log := slog.New(h).With("vm", "web-1")
	log.WithGroup("launch").Info("launch recorded\nsecond line", "digest", "ab12", "vcpus", 4, slog.Group("id", "family", "f 1"))

	e, err := j.Next(recvTimeout)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"PRIORITY":              "6",
		"MESSAGE":               "launch recorded\nsecond line vm=web-1 launch.digest=ab12 launch.vcpus=4 launch.id.family=\"f 1\"",
		"VM":                    "web-1",
		"SNPD_LAUNCH_DIGEST":    "ab12",
		"SNPD_LAUNCH_VCPUS":     "4",
		"SNPD_LAUNCH_ID_FAMILY": "f 1",
		"SYSLOG_IDENTIFIER":     filepath.Base(os.Args[0]),
		"CODE_FUNC":             "github.com/snpd/snpd/systemd.TestJournalHandlerFields",
	}
	for k, v := range want {
		if e.Fields[k] != v {
			t.Errorf("%s = %q, want %q", k, e.Fields[k], v)
		}
	}
	if !strings.HasSuffix(e.Fields["CODE_FILE"], "journal_test.go") || e.Fields["CODE_LINE"] == "" {
		t.Errorf("CODE_FILE/LINE = %q:%q", e.Fields["CODE_FILE"], e.Fields["CODE_LINE"])
	}
	if e.Memfd || e.Cred == nil || int(e.Cred.Pid) != os.Getpid() {
		t.Errorf("memfd %v, sender %+v", e.Memfd, e.Cred)
	}
	if fallback.Len() != 0 {
		t.Errorf("fallback written while the journal was up: %q", fallback)
	}
}

func TestJournalHandlerPriorities(t *testing.T) {
	j, h, _ := newTestJournal(t, slog.LevelInfo)
	log := slog.New(h)
	log.Debug("dropped below the level")
	log.Info("i")
	log.Warn("w")
	log.Error("e", "err", fmt.Errorf("starting qemu: %w", os.ErrNotExist))
	log.Log(context.Background(), slog.LevelError+4, "beyond error")
	for _, w := range []struct{ msg, prio string }{
		{"i", "6"}, {"w", "4"}, {"e err=\"starting qemu: file does not exist\"", "3"}, {"beyond error", "3"},
	} {
		e, err := j.Next(recvTimeout)
		if err != nil {
			t.Fatal(err)
		}
		if e.Fields["MESSAGE"] != w.msg || e.Fields["PRIORITY"] != w.prio {
			t.Errorf("got MESSAGE=%q PRIORITY=%s, want %q %s", e.Fields["MESSAGE"], e.Fields["PRIORITY"], w.msg, w.prio)
		}
	}
	if e, err := j.Next(100 * time.Millisecond); err == nil {
		t.Errorf("unexpected entry %v", e.Fields)
	}
}

func TestJournalHandlerLargeEntryViaSealedMemfd(t *testing.T) {
	j, h, fallback := newTestJournal(t, slog.LevelInfo)
	msg := strings.Repeat("0123456789abcdef", 1<<16) + "\nend" // 1 MiB + a newline
	slog.New(h).Info(msg, "vm", "big")
	e, err := j.Next(recvTimeout)
	if err != nil {
		t.Fatal(err)
	}
	if !e.Memfd || !e.Sealed {
		t.Errorf("memfd %v sealed %v, want a sealed memfd for a 1 MiB entry", e.Memfd, e.Sealed)
	}
	if e.Fields["MESSAGE"] != msg+" vm=big" || e.Fields["VM"] != "big" {
		t.Errorf("MESSAGE of %d bytes, VM=%q", len(e.Fields["MESSAGE"]), e.Fields["VM"])
	}
	if fallback.Len() != 0 {
		t.Errorf("fallback written: %.100q", fallback)
	}
}

func TestJournalHandlerFallsBackWhenJournalGone(t *testing.T) {
	j, h, fallback := newTestJournal(t, slog.LevelInfo)
	if err := os.Remove(j.Path); err != nil {
		t.Fatal(err)
	}
	r := slog.NewRecord(time.Now(), slog.LevelWarn, "journald restarting", 0)
	r.AddAttrs(slog.String("vm", "a"))
	if err := h.Handle(context.Background(), r); err == nil {
		t.Error("Handle with the journal gone: nil error")
	}
	if !strings.Contains(fallback.String(), `msg="journald restarting" vm=a`) {
		t.Errorf("fallback = %q", fallback)
	}
}

func TestNewJournalHandlerRejectsNonSocket(t *testing.T) {
	p := filepath.Join(t.TempDir(), "file")
	os.WriteFile(p, nil, 0o600)
	for _, path := range []string{p, p + ".missing"} {
		if _, err := NewJournalHandler(path, nil, nil); err == nil {
			t.Errorf("NewJournalHandler(%s): nil error", path)
		}
	}
}

// streamFile creates a file standing in for stderr and returns JOURNAL_STREAM for it.
func streamFile(t *testing.T) (*os.File, string) {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return f, fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}

func TestNewLogHandlerChoosesJournalOnlyForTheJournalStream(t *testing.T) {
	j := systemdtest.NewJournal(t)
	f, stream := streamFile(t)
	_, other := streamFile(t)
	for _, c := range []struct {
		name, env, socket string
		journal           bool
	}{
		{"JOURNAL_STREAM names w", stream, j.Path, true},
		{"JOURNAL_STREAM unset", "", j.Path, false},
		{"JOURNAL_STREAM names another file", other, j.Path, false},
		{"JOURNAL_STREAM malformed", stream + "x", j.Path, false},
		{"no journal socket", stream, j.Path + ".missing", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("JOURNAL_STREAM", c.env)
			if err := f.Truncate(0); err != nil {
				t.Fatal(err)
			}
			f.Seek(0, 0)
			slog.New(newLogHandler(f, slog.LevelInfo, c.socket)).Info("hello", "vm", "x")
			text, _ := os.ReadFile(f.Name())
			e, err := j.Next(200 * time.Millisecond)
			if c.journal {
				if err != nil || e.Fields["MESSAGE"] != "hello vm=x" || e.Fields["VM"] != "x" {
					t.Errorf("journal entry %v, %v", e.Fields, err)
				}
				if len(text) != 0 {
					t.Errorf("text written too: %q", text)
				}
				return
			}
			if err == nil {
				t.Errorf("journal entry %v, want plain text only", e.Fields)
			}
			if !strings.Contains(string(text), "level=INFO msg=hello vm=x") {
				t.Errorf("text output %q", text)
			}
		})
	}
}

func TestNewLogHandlerPlainForNonFile(t *testing.T) {
	var b bytes.Buffer
	slog.New(NewLogHandler(&b, slog.LevelWarn)).Warn("w", "k", "v")
	if !strings.Contains(b.String(), "level=WARN msg=w k=v") {
		t.Errorf("got %q", b.String())
	}
}

func TestFieldName(t *testing.T) {
	for _, c := range []struct {
		path []string
		want string
	}{
		{[]string{"vm"}, "VM"},
		{[]string{"g", "vm"}, "SNPD_G_VM"},
		{[]string{"qemu-pid"}, "SNPD_QEMU_PID"},
		{[]string{"é"}, "SNPD__"},
		{[]string{strings.Repeat("a", 80)}, "SNPD_" + strings.Repeat("A", 59)},
	} {
		if got := fieldName(c.path); got != c.want {
			t.Errorf("fieldName(%q) = %q, want %q", c.path, got, c.want)
		}
	}
}

func TestParseJournalStream(t *testing.T) {
	for _, c := range []struct {
		s        string
		dev, ino uint64
		ok       bool
	}{
		{"8:1234", 8, 1234, true},
		{"0:0", 0, 0, true},
		{"8:1234x", 0, 0, false},
		{"8", 0, 0, false},
		{":1", 0, 0, false},
		{"-8:1", 0, 0, false},
		{"8:1:2", 0, 0, false},
	} {
		d, i, err := parseJournalStream(c.s)
		if (err == nil) != c.ok || d != c.dev || i != c.ino {
			t.Errorf("parseJournalStream(%q) = %d, %d, %v", c.s, d, i, err)
		}
	}
}

func FuzzParseJournalStream(f *testing.F) {
	f.Add("8:1234")
	f.Add("1:")
	f.Fuzz(func(t *testing.T, s string) {
		d, i, err := parseJournalStream(s)
		if err != nil {
			if d != 0 || i != 0 {
				t.Fatal("values with an error")
			}
			return
		}
		a, b, _ := strings.Cut(s, ":")
		wa, erra := strconv.ParseUint(a, 10, 64)
		wb, errb := strconv.ParseUint(b, 10, 64)
		if erra != nil || errb != nil || wa != d || wb != i || strings.ContainsAny(s, "+- ") {
			t.Fatalf("%q parsed as %d:%d", s, d, i)
		}
	})
}

// FuzzJournalEncoding checks that every record the handler can be given encodes into
// an entry journald accepts, with the message intact.
func FuzzJournalEncoding(f *testing.F) {
	f.Add("hello", "vm", "web", "g")
	f.Add("a\nb", "k\n", "v\nw", "")
	f.Add("", "", "=", "é")
	f.Fuzz(func(t *testing.T, msg, key, val, group string) {
		var fb bytes.Buffer
		var tb strings.Builder
		appendAttr(&fb, &tb, []string{group}, slog.String(key, val))
		var b bytes.Buffer
		appendField(&b, "MESSAGE", msg+tb.String())
		b.Write(fb.Bytes())
		fields, err := systemdtest.DecodeEntry(b.Bytes())
		if err != nil {
			t.Fatalf("entry %q does not decode: %v", b.Bytes(), err)
		}
		if fields["MESSAGE"] != msg+tb.String() {
			t.Fatalf("MESSAGE = %q", fields["MESSAGE"])
		}
	})
}

func TestJournalHandlerConcurrent(t *testing.T) {
	j, h, fallback := newTestJournal(t, slog.LevelInfo)
	base := slog.New(h).With("component", "manager")
	const workers, each = 8, 50
	done := make(chan struct{})
	for w := 0; w < workers; w++ {
		go func(w int) {
			defer func() { done <- struct{}{} }()
			log := base.With("vm", fmt.Sprintf("vm-%d", w))
			for i := 0; i < each; i++ {
				log.WithGroup("run").Info("state", "n", i)
			}
		}(w)
	}
	seen := map[string]int{}
	for k := 0; k < workers*each; k++ {
		e, err := j.Next(recvTimeout)
		if err != nil {
			t.Fatalf("entry %d: %v (fallback %q)", k, err, fallback)
		}
		if e.Fields["SNPD_COMPONENT"] != "manager" || e.Fields["SNPD_RUN_N"] == "" {
			t.Fatalf("entry %v", e.Fields)
		}
		seen[e.Fields["VM"]]++
	}
	for w := 0; w < workers; w++ {
		<-done
		if n := seen[fmt.Sprintf("vm-%d", w)]; n != each {
			t.Errorf("vm-%d: %d entries, want %d", w, n, each)
		}
	}
}
