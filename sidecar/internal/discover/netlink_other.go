//go:build !linux

package discover

import "errors"

// NewNetlinkSource returns a LinkSource that fails: netlink exists only on
// Linux.
func NewNetlinkSource() LinkSource { return nullLinkSource{} }

type nullLinkSource struct{}

func (nullLinkSource) Links() ([]Link, error) {
	return nil, errors.New("network discovery needs Linux (netlink)")
}
