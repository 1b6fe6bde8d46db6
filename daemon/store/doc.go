// Package store is snpd's durable state: VM definitions, one record per start (with the
// launch record written before the guest's first instruction) and libvirt domain
// registrations, in one bbolt file in the state directory.
//
// It owns the file format and nothing else: it must not import package daemon,
// daemon/launch or daemon/guestchan, nor config, snp or qmp; its values are the wire
// types of daemon/api and JSON.
package store
