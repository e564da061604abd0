//go:build linux

package discover

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
)

// NewNetlinkSource returns the LinkSource backed by rtnetlink.
func NewNetlinkSource() LinkSource { return netlinkSource{} }

type netlinkSource struct{}

func (netlinkSource) Links() ([]Link, error) {
	links, err := netlink.LinkList()
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, fmt.Errorf("netlink link list: %w", err)
	}
	out := make([]Link, 0, len(links))
	for _, l := range links {
		a := l.Attrs()
		if a == nil {
			continue
		}
		li := Link{
			Name:      a.Name,
			MAC:       a.HardwareAddr.String(),
			MTU:       a.MTU,
			OperState: a.OperState.String(),
			Loopback:  a.Flags&net.FlagLoopback != 0,
			Addresses: []string{},
		}
		addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return nil, fmt.Errorf("netlink address list of %s: %w", a.Name, err)
		}
		for _, ad := range addrs {
			if ad.IPNet != nil {
				li.Addresses = append(li.Addresses, ad.IPNet.String())
			}
		}
		out = append(out, li)
	}
	return out, nil
}
