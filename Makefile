# ssbuild: see README.md. `make demo` runs the main job on the shipped demo
# recipe; `make test` installs what the tests need and runs them.
GO        ?= go
BIN       := bin/ssbuild
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X github.com/sovereign-stack/ssbuild/internal/version.Version=$(VERSION)
FUZZTIME  ?= 5m

# appliance/registry runs go-dqlite, which links Debian's libdqlite, libraft, libuv and
# libsqlite3 through cgo (scripts/apt-packages.txt). The libsqlite3 tag makes
# mattn/go-sqlite3 use that same system SQLite instead of compiling its own copy, and
# go-dqlite's -Wl,-z,now must be allowed. Plain `go build` without them still works: the
# registry then builds as a stub whose Open says ssbuild was built without dqlite.
# (GOFLAGS starts from `go env GOFLAGS`, so flags set with `go env -w` are kept.)
export GOFLAGS := $(strip $(shell $(GO) env GOFLAGS) -tags=libsqlite3)
export CGO_LDFLAGS_ALLOW := -Wl,-z,now

# build links those C libraries (and liblz4, libuv_a) statically, in the order
# the static archives need, so bin/ssbuild starts on hosts whose libdqlite/libraft differ
# from the build machine's (Ubuntu 22.04); netgo/osusergo keep glibc's NSS out.
# `ldd bin/ssbuild` must say "not a dynamic executable".
STATIC_CGO_LDFLAGS := -ldqlite -lraft -luv_a -llz4 -lsqlite3 -lm -lpthread -ldl -lrt

.PHONY: all build deps test test-short vet demo fuzz bench clean man

all: build

# Static, with the dqlite registry: the binary runs on hosts and in images
# whose libraries differ from the build machine's (see STATIC_CGO_LDFLAGS).
# Every target that compiles depends on deps: cgo needs Debian's dqlite headers
# and libraries, which a fresh machine does not have (the script returns at
# once when everything is installed).
build: deps
	CGO_LDFLAGS='$(STATIC_CGO_LDFLAGS)' $(GO) build -trimpath -tags=libsqlite3,netgo,osusergo \
		-ldflags '$(LDFLAGS) -linkmode external -extldflags "-static"' -o $(BIN) ./cmd/ssbuild

deps:
	bash scripts/install-deps.sh

vet: deps
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo 'gofmt: files above need formatting'; exit 1; }
	$(GO) vet ./...

test: vet
	$(GO) test -timeout 50m ./...

# The fast tier only: no daemons, no debootstrap, no qemu.
test-short: vet
	$(GO) test -short ./...

demo: build
	bash scripts/demo.sh

fuzz:
	$(GO) test ./recipes -run '^$$' -fuzz FuzzLoad -fuzztime $(FUZZTIME) -fuzzminimizetime 5s
	$(GO) test ./recipes/ssimport -run '^$$' -fuzz FuzzImport -fuzztime $(FUZZTIME) -fuzzminimizetime 5s

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

# The manual page, from the command definitions (ssbuild man).
man:
	mkdir -p bin
	$(GO) run -ldflags '$(LDFLAGS)' ./cmd/ssbuild man > bin/ssbuild.1.tmp
	mv bin/ssbuild.1.tmp bin/ssbuild.1

clean:
	rm -rf bin
