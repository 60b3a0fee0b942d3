package node

import (
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// NATTable is the nftables table (family ip) through which the node
// masquerades its instances' outbound traffic: one postrouting chain with
// one rule, "ip saddr CIDR ip daddr != CIDR masquerade". The node owns it
// whole: it replaces it when the cluster network changes and deletes it
// when it stops.
const NATTable = "blixard"

const natChain = "postrouting"

// masquerade keeps NATTable in place through netlink (nftables), so
// instances reach the world through their node's uplink with the node's
// address. Used only by the network component's goroutine and Close.
type masquerade struct {
	conn    *nftables.Conn
	applied netip.Prefix // what the table carries, as last written or seen
}

// newMasquerade checks that nftables answers (the kernel has nf_tables and
// the process CAP_NET_ADMIN) by listing the tables; it changes nothing.
func newMasquerade() (*masquerade, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	if _, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4); err != nil {
		return nil, fmt.Errorf("nftables: list tables (needs nf_tables in the kernel and CAP_NET_ADMIN): %w", err)
	}
	return &masquerade{conn: c}, nil
}

func (m *masquerade) table() *nftables.Table {
	return &nftables.Table{Family: nftables.TableFamilyIPv4, Name: NATTable}
}

// ensure makes the table masquerade cidr, rewriting it (in one atomic
// batch: nothing is ever half there) when it is missing, has lost its rule
// or carries another network.
func (m *masquerade) ensure(cidr netip.Prefix) error {
	if !cidr.Addr().Is4() {
		return fmt.Errorf("masquerade: cluster network %s is not IPv4", cidr)
	}
	cidr = cidr.Masked()
	if m.applied == cidr && m.present() {
		return nil
	}
	t := m.table()
	// Add (a no-op when it exists), delete, add again: the batch replaces
	// whatever the table held without failing when it did not exist.
	m.conn.AddTable(t)
	m.conn.DelTable(t)
	t = m.conn.AddTable(t)
	ch := m.conn.AddChain(&nftables.Chain{Name: natChain, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	m.conn.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: masqueradeExprs(cidr)})
	if err := m.conn.Flush(); err != nil {
		m.applied = netip.Prefix{}
		return fmt.Errorf("masquerade: write nft table ip %s: %w", NATTable, err)
	}
	m.applied = cidr
	return nil
}

// present reports whether the table still has its one rule.
func (m *masquerade) present() bool {
	t := m.table()
	rules, err := m.conn.GetRules(t, &nftables.Chain{Name: natChain, Table: t})
	return err == nil && len(rules) == 1
}

// remove deletes the table; a table that is not there is no error.
func (m *masquerade) remove() error {
	tables, err := m.conn.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return fmt.Errorf("masquerade: list tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == NATTable {
			m.conn.DelTable(t)
			if err := m.conn.Flush(); err != nil {
				return fmt.Errorf("masquerade: delete nft table ip %s: %w", NATTable, err)
			}
		}
	}
	m.applied = netip.Prefix{}
	return nil
}

// masqueradeExprs is "ip saddr CIDR ip daddr != CIDR masquerade": traffic
// between instances (on any node) keeps its addresses; everything leaving
// the cluster network takes the address of the interface it leaves by.
func masqueradeExprs(cidr netip.Prefix) []expr.Any {
	mask := prefixMask(cidr.Bits())
	network := cidr.Addr().AsSlice()
	match := func(offset uint32, op expr.CmpOp) []expr.Any {
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: op, Register: 1, Data: network},
		}
	}
	out := match(12, expr.CmpOpEq)                 // IPv4 source address
	out = append(out, match(16, expr.CmpOpNeq)...) // IPv4 destination address
	return append(out, &expr.Masq{})
}

func prefixMask(bits int) []byte {
	m := make([]byte, 4)
	for i := range m {
		switch {
		case bits >= 8:
			m[i] = 0xff
			bits -= 8
		case bits > 0:
			m[i] = byte(0xff << (8 - bits))
			bits = 0
		}
	}
	return m
}

// ipv4Forwarding reports whether the host routes IPv4 between interfaces,
// which outbound traffic from the bridge to the uplink needs.
func ipv4Forwarding() bool {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	return err == nil && strings.TrimSpace(string(b)) == "1"
}
