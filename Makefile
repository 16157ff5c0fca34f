# swift-nbdkit: `make run` and `make check` set up a fresh Debian machine, build and run.

SWIFT ?= swift
BIN := .build/debug/nbdkit
# Debian packages the build and the tests need.
DEB_PACKAGES := libnbd-bin python3-libnbd qemu-utils libgnutls28-dev libsystemd-dev pkg-config \
                fdisk e2fsprogs gnutls-bin python3
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all deps build run check unit-test clean example1-image

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

# The main job: a captive server on the embedded example1 disk, inspected by nbdinfo.
run: build
	$(BIN) -U - example1 --run 'nbdinfo "$$uri"'

# Every test: wire-format unit tests and integration tests against the built binary.
check: build
	$(SWIFT) test --disable-swift-testing

# Regenerates Sources/NBDPlugins/Example1Image.swift.
example1-image:
	scripts/make-example1.sh

clean:
	rm -rf .build
