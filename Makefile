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

# build: snpd, snp-agent, and snpctl twice (cmd/snpctl/commands.go): snpctl-full has every
# command; snpctl (-tags snpctl_lean) has those that talk to snpd's API and measure,
# starts in about half the time, and runs id-block, policy and libvirt-hook through
# snpctl-full.
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/snpd ./cmd/snp-agent
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/snpctl-full ./cmd/snpctl
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -tags snpctl_lean -o $(BIN)/snpctl ./cmd/snpctl

demo: deps build
	bash scripts/demo.sh

# test: install, lint, unit + integration tests with the race detector, then a short run
# of every fuzz target.
test: deps lint unit fuzz

unit:
	$(GO) test -race -count=1 -timeout 40m ./...

lint:
	bash scripts/lint.sh

fuzz:
	bash scripts/fuzz-all.sh $(FUZZTIME)

bench: deps build
	bash scripts/bench.sh

# install: binaries, units and the sysusers.d entry. On a live host (no DESTDIR) it also
# creates group snpd (snpd.socket's SocketGroup) and reloads units when systemd is the
# init; then: systemctl enable --now snpd.socket snpd.service
install: build
	install -D -m 0755 $(BIN)/snpd $(DESTDIR)/usr/local/bin/snpd
	install -D -m 0755 $(BIN)/snpctl $(DESTDIR)/usr/local/bin/snpctl
	install -D -m 0755 $(BIN)/snpctl-full $(DESTDIR)/usr/local/bin/snpctl-full
	install -D -m 0644 systemd/snpd.service $(DESTDIR)/etc/systemd/system/snpd.service
	install -D -m 0644 systemd/snpd.socket $(DESTDIR)/etc/systemd/system/snpd.socket
	install -D -m 0644 systemd/snpd.sysusers $(DESTDIR)/etc/sysusers.d/snpd.conf
	if [ -z "$(DESTDIR)" ] && command -v systemd-sysusers >/dev/null; then systemd-sysusers /etc/sysusers.d/snpd.conf; fi
	if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

# install-hook: the hook is snpctl-full itself (the lean snpctl would look for snpctl-full
# beside it, in qemu.d).
install-hook: build
	install -D -m 0755 $(BIN)/snpctl-full $(DESTDIR)/etc/libvirt/hooks/qemu.d/snpd

clean:
	rm -rf $(BIN)
