// Package guestchantest fakes the other ends of snpd's guest channel, which this machine
// cannot have: a vsock listener (Listener yields connections with a chosen peer CID, as
// guestchan.GuestListener requires, so the CID-to-VM mapping is tested without vsock)
// and QEMU's chardev server on a VM's agent.sock (Chardev).
package guestchantest

import (
	"errors"
	"net"
	"sync"
)

// Listener is a fake vsock listener (it satisfies guestchan.GuestListener): each Dial
// returns the guest's end of a new in-memory connection, whose host end Accept yields
// with the given peer CID. Safe for concurrent use.
type Listener struct {
	conns     chan accepted
	closed    chan struct{}
	closeOnce sync.Once
}

type accepted struct {
	c   net.Conn
	cid uint32
}

// NewListener returns an open Listener.
func NewListener() *Listener {
	return &Listener{conns: make(chan accepted), closed: make(chan struct{})}
}

// ErrClosed is returned by Accept and Dial after Close.
var ErrClosed = errors.New("guestchantest: listener closed")

// Dial connects as a guest with context id cid and returns the guest's end. It blocks
// until Accept takes the connection or the listener closes.
func (l *Listener) Dial(cid uint32) (net.Conn, error) {
	host, guest := net.Pipe()
	select {
	case l.conns <- accepted{host, cid}:
		return guest, nil
	case <-l.closed:
		host.Close()
		guest.Close()
		return nil, ErrClosed
	}
}

// Accept returns the host's end of the next Dial and the dialler's CID.
func (l *Listener) Accept() (net.Conn, uint32, error) {
	select {
	case a := <-l.conns:
		return a.c, a.cid, nil
	case <-l.closed:
		return nil, 0, ErrClosed
	}
}

// Close stops the listener; blocked Accept and Dial calls return ErrClosed.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return nil
}
