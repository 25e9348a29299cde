# ssbuild: see README.md. `make demo` runs the main job on the shipped demo
# recipe; `make test` installs what the tests need and runs them.
GO        ?= go
BIN       := bin/ssbuild
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X github.com/sovereign-stack/ssbuild/internal/version.Version=$(VERSION)
FUZZTIME  ?= 5m

.PHONY: all build deps test test-short vet demo fuzz bench clean

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/ssbuild

deps:
	bash scripts/install-deps.sh

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo 'gofmt: files above need formatting'; exit 1; }
	$(GO) vet ./...

test: deps vet
	$(GO) test -timeout 28m ./...

# The fast tier only: no daemons, no debootstrap, no qemu.
test-short: vet
	$(GO) test -short ./...

demo: build
	$(BIN) plan --recipe demo

fuzz:
	$(GO) test ./recipes -run '^$$' -fuzz FuzzLoad -fuzztime $(FUZZTIME) -fuzzminimizetime 5s
	$(GO) test ./recipes/ssimport -run '^$$' -fuzz FuzzImport -fuzztime $(FUZZTIME) -fuzzminimizetime 5s

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

clean:
	rm -rf bin
