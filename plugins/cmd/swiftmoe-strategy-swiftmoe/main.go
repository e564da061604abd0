// Command swiftmoe-strategy-swiftmoe serves the swiftmoe strategy as a sidecar plugin.
package main

import (
	"github.com/swiftmoe/swiftmoe/plugins/sdk"
	"github.com/swiftmoe/swiftmoe/plugins/swiftmoe"
)

func main() { sdk.Serve(swiftmoe.New()) }
