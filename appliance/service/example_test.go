package service_test

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	lxd "github.com/canonical/lxd/client"

	"github.com/sovereign-stack/ssbuild/appliance/cluster"
	"github.com/sovereign-stack/ssbuild/appliance/service"
	"github.com/sovereign-stack/ssbuild/handoff/config"
	"github.com/sovereign-stack/ssbuild/internal/progress"
)

// What `ssbuild appliance run` does on every host (its systemd unit's
// command), and what `ssbuild appliance status` prints.
func ExampleRun() {
	a, err := config.Load(config.DefaultPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, err) // file:line:col for every problem
		return
	}
	secret, err := config.ReadSecret(a.SecretFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	c, err := lxd.ConnectLXDUnix("/var/lib/lxd/unix.socket", nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Forms or joins the cluster, opens the registry node, serves status
	// until SIGTERM; run it again after any failure.
	if err := service.Run(ctx, service.Options{Host: cluster.Host{Config: a, Secret: secret, LXD: c,
		LXDDir: "/var/lib/lxd", Progress: progress.ForFile(os.Stderr, false)}}); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}

	// On any host, while its service runs or not:
	r := service.Status(context.Background(), a, c, nil)
	_ = r.Write(os.Stdout, time.Now())
}
