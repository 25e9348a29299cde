// Package stick owns the installer stick's names: what images/installer and
// images/installerbuild write onto the stick and appliance/install reads
// back from it at the machine being installed.
//
// The stick is a GPT disk:
//
//	partition 1 ESPLabel      EFI system partition: systemd-boot, the installer
//	                          kernel and initramfs (ssbuild is its /init)
//	partition 2 PayloadLabel  squashfs, the payload:
//
//	Manifest            sha256sum format, "<hex>  <relative path>", every file below
//	ManifestSig         with a signed build: SSHSIG of Manifest (internal/signature),
//	                    checked with the key the installer initramfs carries at
//	                    SignerKeyPath
//	OSImage             ext4 image of the host OS root filesystem
//	ESPDir/...          copied verbatim onto the target's ESP; holds BootloaderESP
//	BaseImageDir/...    optional: an `ssbuild image` output folder (handoff/imagedir)
//	RecipeName          the recipe the stick was built from
//	SecretName          the cluster's pre-shared secret
package stick

import "github.com/sovereign-stack/ssbuild/internal/signature"

// GPT partition names of the stick.
const (
	ESPLabel     = "SSBUILD-ESP"     // also the FAT volume label of partition 1
	PayloadLabel = "SSBUILD-PAYLOAD" // the payload squashfs
)

// Names inside the payload.
const (
	Manifest      = signature.ChecksumsFile
	ManifestSig   = signature.SigFile // not listed in the manifest: it signs it
	OSImage       = "os.img"
	ESPDir        = "esp"
	BootloaderESP = "EFI/BOOT/BOOTX64.EFI" // removable-media fallback path, firmware boots it without a boot entry
	BaseImageDir  = "base-image"
	RecipeName    = "recipe.yaml"
	SecretName    = "cluster.secret"
)

// SignerKeyPath is where the installer initramfs of a signed build carries
// the builder's public key; the installer then refuses a payload whose
// manifest that key did not sign.
const SignerKeyPath = "/etc/ssbuild/payload-signer.pub"

// CmdlineHost is the kernel argument of a boot-menu entry that installs one
// named host: ssbuild.host=NAME.
const CmdlineHost = "ssbuild.host"

// MenuTitle is the title of the boot-menu entry that installs host name.
func MenuTitle(name string) string { return "install host " + name }
