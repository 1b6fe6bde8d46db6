# snpd — make demo runs the whole story on this host; make test runs every test.
# Both install what they need first (root: QEMU 10 from bookworm-backports, OVMF, libvirt,
# a guest kernel); see scripts/install-deps.sh.

GO        ?= go
BIN       := bin
FUZZTIME  ?= 5s
export GOFLAGS ?= -mod=mod
# VERSION is what --version prints and GET /v1/status reports: git describe of this
# checkout, "dev" outside one.
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION) -X github.com/snpd/snpd/daemon.Version=$(VERSION)

.PHONY: all build deps demo test unit lint fuzz bench install install-hook clean

all: build

deps:
	bash scripts/install-deps.sh

# build: snpd, snpctl (every command, and the libvirt hook) and snp-agent, static.
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/snpd ./cmd/snpctl ./cmd/snp-agent

demo: deps build
	bash scripts/demo.sh

# test: install, lint, a short run of every fuzz target, then unit + integration tests
# with the race detector, last so that make test ends with their one-line count.
test: deps lint fuzz unit

# unit: go test's usual output (package results, failed tests in full), then the skipped
# tests with their reasons and one line counting passed, failed and skipped tests
# (scripts/testsummary); fails if any test failed.
unit:
	$(GO) run ./scripts/testsummary -race -count=1 -timeout 40m ./...

lint:
	bash scripts/lint.sh

fuzz:
	bash scripts/fuzz-all.sh $(FUZZTIME)

bench: deps build
	bash scripts/bench.sh

# install: binaries, units, the sysusers.d entry, and a commented default
# /etc/snpd/snpd.toml and policy.toml where none exists (an existing file is never
# replaced; snpd does not start without a configuration and a policy). On a live host
# (no DESTDIR) it also creates group snpd (snpd.socket's SocketGroup) and reloads units
# when systemd is the init; then: systemctl enable --now snpd.socket snpd.service
install: build
	install -D -m 0755 $(BIN)/snpd $(DESTDIR)/usr/local/bin/snpd
	install -D -m 0755 $(BIN)/snpctl $(DESTDIR)/usr/local/bin/snpctl
	install -D -m 0644 systemd/snpd.service $(DESTDIR)/etc/systemd/system/snpd.service
	install -D -m 0644 systemd/snpd.socket $(DESTDIR)/etc/systemd/system/snpd.socket
	install -D -m 0644 systemd/snpd.sysusers $(DESTDIR)/etc/sysusers.d/snpd.conf
	install -d -m 0755 $(DESTDIR)/etc/snpd
	[ -e $(DESTDIR)/etc/snpd/snpd.toml ] || install -m 0644 config/defaults/snpd.toml $(DESTDIR)/etc/snpd/snpd.toml
	[ -e $(DESTDIR)/etc/snpd/policy.toml ] || install -m 0644 config/defaults/policy.toml $(DESTDIR)/etc/snpd/policy.toml
	if [ -z "$(DESTDIR)" ] && command -v systemd-sysusers >/dev/null; then systemd-sysusers /etc/sysusers.d/snpd.conf; fi
	if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

# install-hook: a copy of snpctl named snpd in libvirt's qemu.d; invoked by that name it
# acts as `snpctl libvirt-hook` (docs/libvirt-hook.md).
install-hook: build
	install -D -m 0755 $(BIN)/snpctl $(DESTDIR)/etc/libvirt/hooks/qemu.d/snpd

clean:
	rm -rf $(BIN)
