# swift-nbdkit: `make run` and `make check` set up a fresh Debian machine, build and run.

SWIFT ?= swift
BIN := .build/debug/nbdkit
# Debian packages the build and the tests need.
DEB_PACKAGES := libnbd-bin python3-libnbd qemu-utils libgnutls28-dev libsystemd-dev pkg-config \
                fdisk e2fsprogs gnutls-bin python3 systemd groff-base mandoc netbase strace iproute2
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all deps build release run check clean example1-image bench install uninstall

all: build

# Installs whatever of DEB_PACKAGES is missing.
deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release -Xswiftc -static-stdlib

# The main job: a captive server on the embedded example1 disk, inspected by nbdinfo.
run: build
	$(BIN) -U - example1 --run 'nbdinfo "$$uri"'

# Every test: unit tests (wire format, polling limit) and integration tests against the built binary.
check: build
	$(SWIFT) test --disable-swift-testing

# Regenerates Sources/NBDPlugins/Example1Image.swift.
example1-image:
	scripts/make-example1.sh

clean:
	rm -rf .build

# Benchmarks against nbdkit 1.32, qemu-nbd and nbd-server; writes bench/RESULTS.md (ROUNDS=5).
bench:
	bench/run.sh

# Installation layout. `make install PREFIX=/usr DESTDIR=/tmp/stage` stages a package;
# INSTALL_BIN chooses another binary than the release build (the install test uses the debug one).
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
MANDIR ?= $(PREFIX)/share/man
UNITDIR ?= $(PREFIX)/lib/systemd/system
RELEASE_BIN := .build/release/nbdkit
INSTALL_BIN ?= $(RELEASE_BIN)
MAN_PAGES := $(notdir $(wildcard man/*.1))
UNITS := $(notdir $(wildcard systemd/*.socket systemd/*.service))

# The release binary, built (without installing packages) only if it is missing: run
# `make release` first to rebuild it, then `make install` (possibly as root) only copies.
$(RELEASE_BIN):
	$(SWIFT) build -c release -Xswiftc -static-stdlib

# Installs the binary, the manual pages and the systemd units (with @BINDIR@ filled in).
install: $(INSTALL_BIN)
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(UNITDIR)
	install -m 0755 $(INSTALL_BIN) $(DESTDIR)$(BINDIR)/nbdkit
	for p in $(MAN_PAGES); do install -m 0644 man/$$p $(DESTDIR)$(MANDIR)/man1/$$p || exit 1; done
	for u in $(UNITS); do \
	  sed 's|@BINDIR@|$(BINDIR)|g' systemd/$$u > $(DESTDIR)$(UNITDIR)/$$u && \
	  chmod 0644 $(DESTDIR)$(UNITDIR)/$$u || exit 1; done

# Removes exactly what `make install` installed (same PREFIX and DESTDIR).
uninstall:
	rm -f $(DESTDIR)$(BINDIR)/nbdkit
	for p in $(MAN_PAGES); do rm -f $(DESTDIR)$(MANDIR)/man1/$$p; done
	for u in $(UNITS); do rm -f $(DESTDIR)$(UNITDIR)/$$u; done
