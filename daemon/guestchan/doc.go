// Package guestchan is snpd's end of the channel to the snp-agent in each guest: host
// requests (challenges, provisioning, pings) over a VM's virtio-serial socket or vsock,
// the long-lived serial session per running VM, and the answers to guests' own
// requests (their launch record, the certificate chain) on the session and on vsock,
// bounded and rate limited, each answered about the VM that owns the channel only.
//
// It learns which VMs run through the Fleet interface (the daemon's Manager implements
// it) and must not import package daemon, daemon/launch or daemon/store; it may import
// snp, snp/agentproto and the wire types of daemon/api.
package guestchan
