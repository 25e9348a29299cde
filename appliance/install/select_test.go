package install

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/sovereign-stack/ssbuild/handoff/stick"
	"github.com/sovereign-stack/ssbuild/recipes"
)

// A fabricated machine: two blank NVMe disks of different sizes, a SATA
// disk with a partition, and the installer stick.
func machine() []Disk {
	return []Disk{
		{Name: "nvme0n1", Path: "/dev/nvme0n1", Size: 256 * GiB, Serial: "S4EWNX0R1", WWID: "eui.0025385b91b2a1f1"},
		{Name: "nvme1n1", Path: "/dev/nvme1n1", Size: 1024 * GiB, Serial: "S5GXNF0R2", WWID: "eui.0025385b91b2a1f2"},
		{Name: "sda", Path: "/dev/sda", Size: 12 * GiB, Serial: "SMALL1"},
		{Name: "sdb", Path: "/dev/sdb", Size: 16 * GiB, Removable: true, Partitions: []string{"sdb1", "sdb2"}, PartNames: []string{"ESP", stick.PayloadLabel}},
	}
}

func TestSelectTarget(t *testing.T) {
	boot := map[string]bool{"sdb": true}
	with := func(f func(ds []Disk) []Disk) []Disk { return f(machine()) }
	tests := []struct {
		name     string
		disks    []Disk
		choice   Choice
		resume   bool
		want     string // chosen disk, or "" for an error
		errWants string // substring of the error
	}{
		{name: "auto picks the largest", disks: machine(), want: "nvme1n1"},
		{name: "explicit serial", disks: machine(), choice: Choice{Target: recipes.Target{Serial: "S4EWNX0R1"}}, want: "nvme0n1"},
		{name: "explicit WWID", disks: machine(), choice: Choice{Target: recipes.Target{WWID: "eui.0025385b91b2a1f1"}}, want: "nvme0n1"},
		{name: "explicit path", disks: machine(), choice: Choice{Target: recipes.Target{Path: "/dev/nvme0n1"}}, want: "nvme0n1"},
		{name: "unknown serial", disks: machine(), choice: Choice{Target: recipes.Target{Serial: "NOPE"}}, errWants: "no disk with serial NOPE"},
		{name: "explicit boot stick refused", disks: machine(), choice: Choice{Target: recipes.Target{Path: "/dev/sdb"}}, errWants: "installer's own medium"},
		{name: "explicit too small", disks: machine(), choice: Choice{Target: recipes.Target{Serial: "SMALL1"}, Layout: testLayout},
			errWants: "smaller than 16.0 GiB, the smallest disk the layout allows; lower installer.layout"},
		{name: "auto largest too small", disks: with(func(ds []Disk) []Disk { return ds[2:] }), choice: Choice{Layout: testLayout},
			errWants: "/dev/sda (12.0 GiB, serial SMALL1): it is smaller than"},
		{name: "removable never auto", disks: with(func(ds []Disk) []Disk {
			ds[1].Removable = true
			return ds
		}), want: "nvme0n1"},
		{name: "read-only never auto", disks: with(func(ds []Disk) []Disk {
			ds[1].ReadOnly = true
			return ds
		}), want: "nvme0n1"},
		{name: "explicit read-only refused", disks: with(func(ds []Disk) []Disk {
			ds[0].ReadOnly = true
			return ds
		}), choice: Choice{Target: recipes.Target{Serial: "S4EWNX0R1"}}, errWants: "read-only"},
		{name: "only the stick", disks: with(func(ds []Disk) []Disk { return ds[3:] }), errWants: "no install disk"},
		{name: "partitions refused", disks: with(func(ds []Disk) []Disk {
			ds[0].Found, ds[2].Found = []string{"ext4"}, []string{"ext4"}
			ds[1].Partitions = []string{"nvme1n1p1"}
			return ds
		}), errWants: "/dev/nvme1n1 (1.0 TiB, serial S5GXNF0R2): it holds partitions nvme1n1p1; set installer.wipe: true"},
		{name: "signature refused", disks: with(func(ds []Disk) []Disk {
			ds[0].Found, ds[2].Found = []string{"ext4"}, []string{"ext4"}
			ds[1].Found = []string{"zfs_member"}
			return ds
		}), errWants: "it holds a ZFS pool label"},
		// A larger disk holding data (here LUKS) is passed over for the
		// largest blank one; with wipe the largest is taken.
		{name: "auto passes over a disk holding data", disks: with(func(ds []Disk) []Disk {
			ds[1].Found = []string{"crypto_LUKS"}
			return ds
		}), want: "nvme0n1"},
		{name: "auto with wipe takes the largest", disks: with(func(ds []Disk) []Disk {
			ds[1].Found = []string{"crypto_LUKS"}
			return ds
		}), choice: Choice{Wipe: true}, want: "nvme1n1"},
		{name: "a blank disk too small is not usable", disks: with(func(ds []Disk) []Disk {
			ds[0].Found, ds[1].Found = []string{"xfs"}, []string{"crypto_LUKS"}
			return ds
		}), choice: Choice{Layout: testLayout}, errWants: "/dev/nvme1n1 (1.0 TiB, serial S5GXNF0R2): it holds a LUKS"},
		{name: "wipe allows", disks: with(func(ds []Disk) []Disk {
			ds[1].Partitions, ds[1].Found = []string{"nvme1n1p1"}, []string{"GPT", "MBR"}
			return ds
		}), choice: Choice{Wipe: true}, want: "nvme1n1"},
		{name: "own unfinished install continues", disks: with(func(ds []Disk) []Disk {
			ds[1].Partitions, ds[1].Found = []string{"nvme1n1p1"}, []string{"GPT", "MBR"}
			return ds
		}), resume: true, want: "nvme1n1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var resumable func(Disk) bool
			if tc.resume {
				resumable = func(Disk) bool { return true }
			}
			got, err := SelectTarget(tc.disks, boot, tc.choice, resumable)
			if tc.want != "" {
				if err != nil || got.Name != tc.want {
					t.Fatalf("got %q, %v; want %s", got.Name, err, tc.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.errWants) {
				t.Fatalf("got %q, %v; want an error with %q", got.Name, err, tc.errWants)
			}
		})
	}
	var refused *RefusedError
	_, err := SelectTarget(with(func(ds []Disk) []Disk {
		ds[0].Found, ds[1].Found, ds[2].Found = []string{"ext4"}, []string{"ext4"}, []string{"ext4"}
		return ds
	}), boot, Choice{}, nil)
	if !errors.As(err, &refused) || refused.Disk.Name != "nvme1n1" {
		t.Errorf("refusal is not a RefusedError naming the disk: %v", err)
	}
}

// TestReadDisks reads a fabricated sysfs tree shaped like the kernel's.
func TestReadDisks(t *testing.T) {
	sys := t.TempDir()
	write := func(rel, data string) {
		p := filepath.Join(sys, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("block/nvme0n1/size", "536870912")
	write("block/nvme0n1/removable", "0")
	write("block/nvme0n1/ro", "0")
	write("block/nvme0n1/wwid", "eui.0025385b91b2a1f1")
	write("block/nvme0n1/device/serial", "S4EWNX0R1")
	write("block/nvme0n1/device/model", "Samsung SSD 980")
	write("block/nvme0n1/dev", "259:0")
	write("block/sdb/size", "31457280")
	write("block/sdb/removable", "1")
	write("block/sdb/ro", "0")
	write("block/sdb/device/wwid", "t10.USB stick")
	write("block/sdb/sdb1/partition", "1")
	write("block/sdb/sdb1/uevent", "MAJOR=8\nMINOR=17\nDEVNAME=sdb1\nDEVTYPE=partition\nPARTN=1\nPARTNAME=ESP")
	write("block/sdb/sdb1/size", "1048576")
	write("block/sdb/sdb2/partition", "2")
	write("block/sdb/sdb2/size", "2097152")
	write("block/sdb/sdb2/uevent", "MAJOR=8\nMINOR=18\nDEVNAME=sdb2\nDEVTYPE=partition\nPARTN=2\nPARTNAME="+stick.PayloadLabel)
	write("block/loop0/size", "1000")
	write("block/sr0/size", "1000")
	write("block/sdc/size", "0") // empty card reader
	got, err := ReadDisks(sys, "/dev")
	if err != nil {
		t.Fatal(err)
	}
	want := []Disk{
		{Name: "nvme0n1", Path: "/dev/nvme0n1", Size: 256 * GiB, Serial: "S4EWNX0R1", WWID: "eui.0025385b91b2a1f1", Model: "Samsung SSD 980", Dev: "259:0"},
		{Name: "sdb", Path: "/dev/sdb", Size: 15 * GiB, Removable: true, WWID: "t10.USB stick",
			Partitions: []string{"sdb1", "sdb2"}, PartSizes: []int64{512 * MiB, GiB}, PartNames: []string{"ESP", stick.PayloadLabel}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ReadDisks:\n got %+v\nwant %+v", got, want)
	}
	boot, err := BootDisks(sys, got, t.TempDir())
	if err != nil || !reflect.DeepEqual(boot, map[string]bool{"sdb": true}) {
		t.Errorf("BootDisks: %v, %v", boot, err)
	}
	if _, err := BootDisks(sys, got[:1], t.TempDir()); err == nil {
		t.Error("BootDisks without a stick: no error")
	}
}

func TestIdentifyHost(t *testing.T) {
	hosts := []recipes.Host{{Name: "nuc1", MAC: "aa:bb:cc:00:00:01"}, {Name: "nuc2", MAC: "aa:bb:cc:00:00:02"}, {Name: "nuc3"}}
	qemuNIC := NIC{"eth0", "52:54:00:12:34:56"}
	for _, tc := range []struct {
		what    string
		cmdline map[string]string
		nics    []NIC
		want    string
	}{
		{"the boot menu entry wins over a matching MAC", map[string]string{stick.CmdlineHost: "nuc3"}, []NIC{{"eth0", "AA:BB:CC:00:00:01"}}, "nuc3"},
		{"MAC on the second NIC, other case", nil, []NIC{qemuNIC, {"eth1", "AA:BB:CC:00:00:02"}}, "nuc2"},
		{"MAC of the first host", nil, []NIC{{"enp1s0", "aa:bb:cc:00:00:01"}}, "nuc1"},
		{"no MAC matches", nil, []NIC{qemuNIC}, ""},
		{"no NIC at all", nil, nil, ""},
		{"two hosts' MACs on one machine", nil, []NIC{{"eth0", "aa:bb:cc:00:00:01"}, {"eth1", "aa:bb:cc:00:00:02"}}, ""},
		{"menu entry names a host the recipe lacks", map[string]string{stick.CmdlineHost: "nuc9"}, []NIC{{"eth0", "aa:bb:cc:00:00:01"}}, ""},
	} {
		h, err := IdentifyHost(hosts, tc.cmdline, tc.nics)
		if h.Name != tc.want || (tc.want == "") != (err != nil) {
			t.Errorf("%s: %q, %v; want %q", tc.what, h.Name, err, tc.want)
		}
		var unknown *UnknownHostError
		if err != nil && !errors.As(err, &unknown) {
			t.Errorf("%s: %T, want *UnknownHostError", tc.what, err)
		}
	}
	// One host: no MAC or menu entry needed, even if its MAC is not here.
	if h, err := IdentifyHost([]recipes.Host{{Name: "solo", MAC: "aa:bb:cc:00:00:09"}}, nil, []NIC{qemuNIC}); err != nil || h.Name != "solo" {
		t.Errorf("single host: %q, %v", h.Name, err)
	}
	if h, err := IdentifyHost(hosts[2:], nil, nil); err != nil || h.Name != "nuc3" {
		t.Errorf("single host without MAC: %q, %v", h.Name, err)
	}
}

// What the owner reads on the console when the stick does not know the
// machine: the MACs it saw, the hosts with theirs, and both ways to choose.
func TestUnknownHostMessage(t *testing.T) {
	hosts := []recipes.Host{{Name: "nuc1", MAC: "aa:bb:cc:00:00:01"}, {Name: "nuc2"}}
	_, err := IdentifyHost(hosts, map[string]string{"console": "ttyS0"}, []NIC{{"enp2s0", "52:54:00:12:34:56"}, {"wlp3s0", "52:54:00:ab:cd:ef"}})
	if err == nil {
		t.Fatal("no error")
	}
	msg := err.Error()
	for _, want := range []string{"no disk was touched", "enp2s0 52:54:00:12:34:56", "wlp3s0 52:54:00:ab:cd:ef",
		"nuc1 (aa:bb:cc:00:00:01)", "nuc2 (no mac)", `"install host NAME"`, "ssbuild.host=NAME", "installer.hosts[].mac"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message lacks %q:\n%s", want, msg)
		}
	}
	_, err = IdentifyHost(hosts, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "none found") {
		t.Errorf("without NICs: %v", err)
	}
}

// NICs reads sysfs: interfaces with a hardware address, sorted by name.
func TestNICs(t *testing.T) {
	sys := t.TempDir()
	for name, addr := range map[string]string{"lo": "00:00:00:00:00:00", "eth1": "52:54:00:00:00:02", "eth0": "52:54:00:00:00:01", "wg0": ""} {
		dir := filepath.Join(sys, "class", "net", name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "address"), []byte(addr+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got := NICs(sys)
	want := []NIC{{"eth0", "52:54:00:00:00:01"}, {"eth1", "52:54:00:00:00:02"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("NICs: %v, want %v", got, want)
	}
}
