// Package daemon is snpd itself: the VM manager (definitions, starts, stops, restarts,
// the event stream), the host-policy admission of launches and libvirt domains,
// reattachment to running guests after a restart, attestation (challenges relayed to
// guests, reports verified against launch records, reference values) and the API
// server with its per-connection authorization.
//
// It composes its subpackages and nothing composes it but cmd/snpd: launch (the launch
// path: spec, argv, sealed files, QEMU probe, facts, QMP verification, QEMU processes),
// store (the durable state), guestchan (snpd's end of the guests' agent channel) and
// metrics (the Prometheus metrics, fed by observe.go, on a listener of their own).
// Imports flow one way, daemon -> {launch, store, guestchan, metrics} -> {config, snp,
// qmp, daemon/api}; the subpackages never import daemon or each other (layout_test.go).
package daemon
