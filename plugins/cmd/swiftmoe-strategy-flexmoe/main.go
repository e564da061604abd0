// Command swiftmoe-strategy-flexmoe serves the flexmoe strategy as a sidecar plugin.
package main

import (
	"github.com/swiftmoe/swiftmoe/plugins/flexmoe"
	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

func main() { sdk.Serve(flexmoe.New()) }
