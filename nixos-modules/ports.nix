# The ports services.blixard listens on, for openFirewall: a pure function
# of the module's evaluated options (config.services.blixard), builtins
# only. Returns { raft; api; } (TCP ports; raft null when neither
# raftAddress nor members names this node's address) and, with
# network.enable, { ingress; vxlan; bridgeUDP; bridgeTCP; } (and with cache.address,
# { cache; }, the binary cache's TCP port): the ingress
# proxy's TCP port (null without ingressAddress), the VXLAN's UDP port
# between the nodes, and the ports the instances reach on the bridge (DHCP
# and DNS).
cfg:
let
  portOf = addr:
    let m = if addr == null then null else builtins.match ".*:([0-9]+)" addr;
    in if m == null then null else builtins.fromJSON (builtins.head m);

  id = toString cfg.nodeId;
  members = cfg.members or { };
  fromMembers =
    if builtins.isList members then
      let
        mine = builtins.filter (m: builtins.substring 0 (builtins.stringLength id + 1) m == "${id}=") members;
      in
      if mine == [ ] then null
      else builtins.substring (builtins.stringLength id + 1) (-1) (builtins.head mine)
    else members.${id} or null;

  raftAddress = if (cfg.raftAddress or null) != null then cfg.raftAddress else fromMembers;
  net = cfg.network or { };
  netOn = net.enable or false;
in
{
  raft = portOf raftAddress;
  api = portOf cfg.apiAddress;
} // (if ((cfg.cache or { }).address or null) != null then {
  # The binary cache's TCP port (with cache.address).
  cache = portOf cfg.cache.address;
} else { }) // (if netOn then {
  ingress = portOf (net.ingressAddress or null);
  vxlan = net.vxlanPort or 4789;
  bridgeUDP = [ 53 67 ];
  bridgeTCP = [ 53 ];
} else { })
