// Package stacks holds the shipped service stacks: one compose file (a
// subset of the compose spec, written as a Go text/template) per stack and
// instance role, embedded in the binary. appliance/stack renders them for a
// deployment of a recipe; README.md in this folder lists what a template
// sees.
package stacks

import (
	"embed"
	"fmt"
	"io/fs"
)

//go:embed demo/*.yaml sovereign/*.yaml
var files embed.FS

// Dir is where the stack files live in the source tree; error messages name
// files by it.
const Dir = "recipes/stacks"

// Read returns the stack file of a stack (demo, sovereign) for an instance
// role (www, btcpay, clams), with the name errors should use.
func Read(stack, role string) (name string, data []byte, err error) {
	p := stack + "/" + role + ".yaml"
	data, err = fs.ReadFile(files, p)
	if err != nil {
		return Dir + "/" + p, nil, fmt.Errorf("no %s stack file for the %s instance (%s/%s)", stack, role, Dir, p)
	}
	return Dir + "/" + p, data, nil
}

// Has reports whether a stack has a file for the role.
func Has(stack, role string) bool {
	_, err := fs.Stat(files, stack+"/"+role+".yaml")
	return err == nil
}
