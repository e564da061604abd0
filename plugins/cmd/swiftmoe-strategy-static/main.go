// Command swiftmoe-strategy-static serves the static strategy as a sidecar plugin.
package main

import (
	"github.com/swiftmoe/swiftmoe/plugins/sdk"
	"github.com/swiftmoe/swiftmoe/plugins/static"
)

func main() { sdk.Serve(static.New()) }
