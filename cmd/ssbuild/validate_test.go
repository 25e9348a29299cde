package main

import (
	"strings"
	"testing"
)

// recipe validate reports what the installer build and deploy would refuse
// later, each at its element: here a host without an address and a stack
// image the recipe does not pre-load.
func TestValidateReportsBuildAndDeployRefusals(t *testing.T) {
	path := writeFile(t, "r.yaml", `apiVersion: ssbuild/v1
name: t
installer:
  hosts:
    - {name: h1, address: 10.0.0.1/24}
    - {name: h2}
deployments:
  - {name: d, chain: regtest, stack: demo, primaryDomain: demo.example, instances: {www: {enabled: false}, clams: {enabled: false}}}
`)
	code, out, errOut := ssbuild(t, "recipe", "validate", path)
	want := []string{
		path + `:6:7: installer.hosts[1]: host h2 has no static address; every host needs one, the hosts find each other by them (address: 192.168.1.11/24)`,
		path + `:8:38: deployments[0].stack: deployment d, btcpay instance, service btcpay (recipes/stacks/demo/btcpay.yaml:43): image ssbuild-demo/postgres is not in the recipe's image.dockerImages: add it there (ref: ssbuild-demo/postgres:<tag>, and its digest) so the base image pre-loads it`,
		path + `:8:38: deployments[0].stack: deployment d, btcpay instance, service btcpay-db (recipes/stacks/demo/btcpay.yaml:20): image ssbuild-demo/postgres is not in the recipe's image.dockerImages: add it there (ref: ssbuild-demo/postgres:<tag>, and its digest) so the base image pre-loads it`,
		path + `:8:38: deployments[0].stack: deployment d, btcpay instance, service lightning (recipes/stacks/demo/btcpay.yaml:85): image ssbuild-demo/web is not in the recipe's image.dockerImages: add it there (ref: ssbuild-demo/web:<tag>, and its digest) so the base image pre-loads it`,
		"4 problems",
	}
	if code != exitInvalid || strings.TrimSpace(errOut) != strings.Join(want, "\n") || out != "" {
		t.Errorf("exit %d, stdout %q, stderr:\n%s\nwant exit %d and:\n%s", code, out, errOut, exitInvalid, strings.Join(want, "\n"))
	}
}

// A virtual-machine instance, which deploy refuses before any change, is a
// validate error at that instance's type, with the fix.
func TestValidateReportsVirtualMachines(t *testing.T) {
	path := writeFile(t, "vm.yaml", `apiVersion: ssbuild/v1
name: t
deployments:
  - name: d
    chain: regtest
    stack: demo
    primaryDomain: demo.example
    instances:
      www: {type: container}
      btcpay: {type: virtual-machine}
      clams: {enabled: false}
`)
	code, _, errOut := ssbuild(t, "recipe", "validate", path)
	want := path + `:10:22: deployments[0].instances.btcpay.type: virtual-machine: ssbuild deploy runs instances as containers only so far (set type: container)`
	if code != exitInvalid || !strings.Contains(errOut, want) || strings.Contains(errOut, "instances.www.type") {
		t.Errorf("exit %d, stderr:\n%s\nwant exit %d with:\n%s", code, errOut, exitInvalid, want)
	}
}
