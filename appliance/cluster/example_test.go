package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	lxd "github.com/canonical/lxd/client"

	"github.com/sovereign-stack/ssbuild/appliance/cluster"
	"github.com/sovereign-stack/ssbuild/handoff/config"
	"github.com/sovereign-stack/ssbuild/internal/progress"
)

// What `ssbuild appliance` does on every host at first boot; the same code
// runs on the initiator and on the joiners. Run it again after any failure:
// it continues from where the host is.
func ExampleService_Run() {
	run := func() error {
		a, err := config.Load(config.DefaultPath) // errors are file:line:col
		if err != nil {
			return err
		}
		secret, err := config.ReadSecret(a.SecretFile) // refuses a file others can read
		if err != nil {
			return err
		}
		c, err := lxd.ConnectLXDUnix("", nil) // $LXD_SOCKET, $LXD_DIR or the default
		if err != nil {
			return fmt.Errorf("connect to LXD: %w", err)
		}
		svc, err := cluster.New(cluster.Options{Host: cluster.Host{
			Config:   a,
			Secret:   secret,
			LXD:      c,
			LXDDir:   "/var/lib/lxd", // server.crt and server.key; the snap's is /var/snap/lxd/common/lxd
			Progress: progress.ForFile(os.Stderr, false),
		}})
		if err != nil {
			return err
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return svc.Run(ctx)
	}
	if err := run(); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, err)
	}

	// `ssbuild appliance status` reads what the service recorded.
	if st, err := cluster.ReadStatus("/var/lib/ssbuild"); err == nil {
		fmt.Printf("%s (%s): %s %s\n", st.Host, st.Role, st.Step, st.LastError)
	}
}
