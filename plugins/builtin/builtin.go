// Package builtin is the one list of the strategies built into SwiftMoE, for
// in-process use: tests, benchmarks and simulation. The sidecar runs the same
// strategies as plugin binaries (plugins/cmd/swiftmoe-strategy-NAME).
package builtin

import (
	"github.com/swiftmoe/swiftmoe/plugins/flexmoe"
	"github.com/swiftmoe/swiftmoe/plugins/sdk"
	"github.com/swiftmoe/swiftmoe/plugins/static"
	"github.com/swiftmoe/swiftmoe/plugins/swiftmoe"
)

var constructors = map[string]func() sdk.Strategy{
	swiftmoe.Name: func() sdk.Strategy { return swiftmoe.New() },
	static.Name:   func() sdk.Strategy { return static.New() },
	flexmoe.Name:  func() sdk.Strategy { return flexmoe.New() },
}

// Names lists the built-in strategies, default first.
func Names() []string {
	return []string{swiftmoe.Name, static.Name, flexmoe.Name}
}

// New returns a new instance of the named built-in strategy, and false when
// no built-in strategy has that name.
func New(name string) (sdk.Strategy, bool) {
	c, ok := constructors[name]
	if !ok {
		return nil, false
	}
	return c(), true
}
