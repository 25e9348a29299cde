package lxdimage

import (
	"context"
	"errors"
)

// VMOptions shape the VM disk.
type VMOptions struct {
	RootSize int64 // bytes of the ext4 root partition; default: from the tree's size
}

func (s Spec) writeVMDisk(ctx context.Context, dir string) error {
	return errors.New("vm: not implemented yet")
}
