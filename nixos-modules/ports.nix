# The TCP ports services.blixard listens on, for openFirewall: a pure
# function of the module's evaluated options (config.services.blixard),
# builtins only. Returns { raft = PORT or null; api = PORT or null; }; raft is
# null when neither raftAddress nor members names this node's address.
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
in
{
  raft = portOf raftAddress;
  api = portOf cfg.apiAddress;
}
