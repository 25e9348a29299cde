package testbed

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	lxd "github.com/canonical/lxd/client"

	"github.com/canonical/lxd/shared/api"
	"github.com/sovereign-stack/ssbuild/appliance/lxdexec"
)

// What tests do with images and instances on a bed host, in one place so
// each test asserts on results instead of re-writing LXD calls.

// UseDirPool creates a dir storage pool and makes it the default profile's
// root disk, so instances can be created on a freshly started host.
func UseDirPool(c lxd.InstanceServer, pool string) error {
	if err := c.CreateStoragePool(api.StoragePoolsPost{Name: pool, Driver: "dir"}); err != nil {
		return fmt.Errorf("create storage pool %s: %w", pool, err)
	}
	profile, etag, err := c.GetProfile("default")
	if err != nil {
		return fmt.Errorf("get default profile: %w", err)
	}
	put := profile.Writable()
	put.Devices["root"] = map[string]string{"type": "disk", "path": "/", "pool": pool}
	if err := c.UpdateProfile("default", put, etag); err != nil {
		return fmt.Errorf("update default profile: %w", err)
	}
	return nil
}

// ImportImage imports an image from files in dir: the metadata tarball
// first, then the rootfs (squashfs or qcow2) for a split image, or one
// unified tarball. It returns the fingerprint LXD computed.
func ImportImage(c lxd.InstanceServer, dir string, files ...string) (string, error) {
	var opened []*os.File
	defer func() {
		for _, f := range opened {
			f.Close()
		}
	}()
	open := func(name string) (*os.File, error) {
		f, err := os.Open(filepath.Join(dir, name))
		if err == nil {
			opened = append(opened, f)
		}
		return f, err
	}
	meta, err := open(files[0])
	if err != nil {
		return "", err
	}
	args := &lxd.ImageCreateArgs{MetaFile: meta, MetaName: files[0]}
	if len(files) == 2 {
		if args.RootfsFile, err = open(files[1]); err != nil {
			return "", err
		}
		args.RootfsName = files[1]
		if strings.HasSuffix(files[1], ".qcow2") { // as `lxc image import` decides
			args.Type = "virtual-machine"
		}
	}
	op, err := c.CreateImage(api.ImagesPost{}, args)
	if err == nil {
		err = op.Wait()
	}
	if err != nil {
		return "", fmt.Errorf("import image %v: %w", files, err)
	}
	fp, _ := op.Get().Metadata["fingerprint"].(string)
	return fp, nil
}

// Launch creates a container from an image and starts it.
func Launch(c lxd.InstanceServer, name, fingerprint string, config map[string]string) error {
	op, err := c.CreateInstance(api.InstancesPost{Name: name, Type: api.InstanceTypeContainer,
		InstancePut: api.InstancePut{Config: config},
		Source:      api.InstanceSource{Type: "image", Fingerprint: fingerprint}})
	if err == nil {
		err = op.Wait()
	}
	if err != nil {
		return fmt.Errorf("create instance %s: %w", name, err)
	}
	op, err = c.UpdateInstanceState(name, api.InstanceStatePut{Action: "start", Timeout: -1}, "")
	if err == nil {
		err = op.Wait()
	}
	if err != nil {
		return fmt.Errorf("start instance %s: %w", name, err)
	}
	return nil
}

// WaitSystemd waits until systemd in the instance has finished booting
// (running, or degraded: some units need a network a test has not) and
// returns that state.
func WaitSystemd(ctx context.Context, c lxd.InstanceServer, name string) (string, error) {
	var state string
	for {
		out, _, _, err := lxdexec.Run(c, name, "systemctl", "is-system-running")
		state = strings.TrimSpace(out)
		if err == nil && (state == "running" || state == "degraded") {
			return state, nil
		}
		select {
		case <-ctx.Done():
			failed, _, _, _ := lxdexec.Run(c, name, "systemctl", "--failed", "--no-pager")
			return state, fmt.Errorf("%s: systemd is %q after waiting: %w\n%s", name, state, ctx.Err(), failed)
		case <-time.After(time.Second):
		}
	}
}
