package systemd

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"
)

// Notify sends the given sd_notify(3) assignments (for example "READY=1",
// "STATUS=3 VMs running") to the service manager as one datagram, so they are applied
// atomically. It is a no-op returning nil when NOTIFY_SOCKET is unset (not run by
// systemd, or Type= is not notify).
//
// NOTIFY_SOCKET is deliberately kept in the environment (go-systemd's
// SdNotify(false, ...)): SdNotify(true, ...) would unset it and every later watchdog
// ping would silently go nowhere. Child processes (QEMU) do not inherit it as long as
// they are started with an explicit environment; with NotifyAccess=main systemd would
// ignore them anyway.
//
// Each state must have the form KEY=VALUE with no newline (a newline would let a value
// such as a VM name smuggle in a second assignment like READY=1); otherwise Notify
// returns an error and sends nothing.
func Notify(state ...string) error {
	if len(state) == 0 {
		return nil
	}
	for _, s := range state {
		if err := checkState(s); err != nil {
			return fmt.Errorf("sending sd_notify: %w", err)
		}
	}
	if _, err := sddaemon.SdNotify(false, strings.Join(state, "\n")); err != nil {
		return fmt.Errorf("sending sd_notify %s: %w", strings.Join(state, ","), err)
	}
	return nil
}

// checkState accepts KEY=VALUE with an upper-case KEY and no newline.
func checkState(s string) error {
	if strings.ContainsAny(s, "\n\x00") {
		return fmt.Errorf("state %q contains a newline or NUL", s)
	}
	key, _, ok := strings.Cut(s, "=")
	if !ok || key == "" {
		return fmt.Errorf("state %q is not KEY=VALUE", s)
	}
	for _, c := range key {
		if (c < 'A' || c > 'Z') && (c < '0' || c > '9') && c != '_' {
			return fmt.Errorf("state %q: key has characters other than A-Z, 0-9 and _", s)
		}
	}
	return nil
}

// Ready tells systemd that start-up is complete (READY=1), with status as the STATUS=
// line shown by `systemctl status` (empty: no STATUS=). Call it once the API answers.
// Newlines in status are replaced by spaces.
func Ready(status string) error {
	if status == "" {
		return Notify(sddaemon.SdNotifyReady)
	}
	return Notify(sddaemon.SdNotifyReady, "STATUS="+oneLine(status))
}

// Status sets the STATUS= line shown by `systemctl status`, formatted like fmt.Sprintf.
// Newlines in the result are replaced by spaces.
func Status(format string, args ...any) error {
	return Notify("STATUS=" + oneLine(fmt.Sprintf(format, args...)))
}

// Stopping tells systemd that shutdown has begun (STOPPING=1).
func Stopping() error {
	return Notify(sddaemon.SdNotifyStopping)
}

// ExtendTimeout asks systemd for d more time to finish starting or stopping
// (EXTEND_TIMEOUT_USEC=, microseconds), for example while reattaching to many guests.
// It must be sent again before d elapses to extend further. d is rounded down to whole
// microseconds; d <= 0 is an error.
func ExtendTimeout(d time.Duration) error {
	if d < time.Microsecond {
		return fmt.Errorf("extending the start/stop timeout: %v is not positive", d)
	}
	return Notify("EXTEND_TIMEOUT_USEC=" + strconv.FormatInt(d.Microseconds(), 10))
}

func oneLine(s string) string {
	return strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ", "\x00", " ").Replace(s)
}

// WatchdogInterval reports the watchdog timeout systemd expects pings within
// (WatchdogSec=, passed as WATCHDOG_USEC in microseconds). It returns 0 with a nil
// error when the watchdog is off or meant for another process (WATCHDOG_PID is not
// ours), and an error when the variables are malformed.
//
// Written here instead of go-systemd's SdWatchdogEnabled because that one accepts
// values whose microseconds overflow time.Duration (a negative interval would make
// time.NewTicker panic) and signs such as "+5"; systemd itself never sends those, but
// the environment is outside input.
func WatchdogInterval() (time.Duration, error) {
	d, err := parseWatchdogEnv(os.Getenv("WATCHDOG_USEC"), os.Getenv("WATCHDOG_PID"), os.Getpid())
	if err != nil {
		return 0, fmt.Errorf("reading the watchdog settings: %w", err)
	}
	return d, nil
}

// maxWatchdog bounds WATCHDOG_USEC so that the interval fits a time.Duration.
const maxWatchdog = time.Duration(math.MaxInt64)

// parseWatchdogEnv parses WATCHDOG_USEC and WATCHDOG_PID as sd_watchdog_enabled(3)
// does: usec empty means off; pid empty means "for us"; pid not self means off.
func parseWatchdogEnv(usec, pid string, self int) (time.Duration, error) {
	if usec == "" {
		return 0, nil
	}
	u, err := parseDecimal(usec)
	if err != nil {
		return 0, fmt.Errorf("parsing WATCHDOG_USEC=%q: %w", usec, err)
	}
	if u == 0 {
		return 0, fmt.Errorf("parsing WATCHDOG_USEC=%q: must be positive", usec)
	}
	if u > uint64(maxWatchdog/time.Microsecond) {
		return 0, fmt.Errorf("parsing WATCHDOG_USEC=%q: too large", usec)
	}
	if pid != "" {
		p, err := parseDecimal(pid)
		if err != nil || p == 0 {
			return 0, fmt.Errorf("parsing WATCHDOG_PID=%q: not a process id", pid)
		}
		if p != uint64(self) {
			return 0, nil
		}
	}
	return time.Duration(u) * time.Microsecond, nil
}

// parseDecimal accepts only ASCII digits (no sign, no spaces), at most 19 of them.
func parseDecimal(s string) (uint64, error) {
	if s == "" || len(s) > 19 {
		return 0, errors.New("not a decimal number of at most 19 digits")
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, errors.New("not a decimal number")
		}
	}
	return strconv.ParseUint(s, 10, 64)
}

// WatchdogLoop sends WATCHDOG=1 at half the interval systemd expects (WatchdogSec=)
// until ctx is done, then returns nil. It returns nil at once when the watchdog is off
// or meant for another process, and an error when WATCHDOG_USEC/WATCHDOG_PID are
// malformed. A failed ping is not fatal (systemd restarts the service if pings stop);
// the loop keeps trying.
func WatchdogLoop(ctx context.Context) error {
	return WatchdogLoopFunc(ctx, nil)
}

// WatchdogLoopFunc is WatchdogLoop with a health check: before each ping it calls
// healthy (with ctx) and skips the ping when it returns an error, so a daemon whose
// main loop is wedged is restarted by systemd rather than kept alive by a goroutine
// that merely still runs. healthy must return well within half the watchdog interval;
// nil means always healthy.
func WatchdogLoopFunc(ctx context.Context, healthy func(context.Context) error) error {
	interval, err := WatchdogInterval()
	if err != nil || interval == 0 {
		return err
	}
	period := interval / 2
	if period <= 0 {
		period = time.Microsecond
	}
	ping := func() {
		if healthy != nil && healthy(ctx) != nil {
			return
		}
		_ = Notify(sddaemon.SdNotifyWatchdog)
	}
	ping()
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			ping()
		}
	}
}
