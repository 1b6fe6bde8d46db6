// Package qmp is a QMP client for QEMU >= 9.1 with typed commands and events.
package qmp
