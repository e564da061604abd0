// Command swiftmoe-strategy-hotspread serves the example hotspread strategy
// as a SwiftMoE sidecar plugin.
package main

import (
	"github.com/swiftmoe/swiftmoe/examples/strategy-plugin/hotspread"
	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

func main() { sdk.Serve(hotspread.New()) }
