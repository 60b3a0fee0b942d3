{
  description = "nixeval test fixture: evaluations that fail or never end";

  outputs = { self }:
    let
      # Nested folds over a 1000-element list: 1000^5 steps in constant
      # stack and bounded memory, so it runs (for days) rather than
      # overflowing the stack like `let f = x: f (x + 1); in f 0` does.
      l = builtins.genList (x: x) 1000;
      loop = depth: builtins.foldl' (acc: _: if depth == 0 then acc + 1 else acc + loop (depth - 1)) 0 l;
    in
    {
      throws = { cluster = "test"; vms.web = throw "boom"; };
      infiniteRecursion = let x = x; in x;
      stackOverflow = let f = x: f (x + 1); in f 0;
      hang = { cluster = "test"; vms.web.vcpu = loop 5; };
      notJSON = { cluster = x: x; };
      # 100 million list elements: about 7 GiB and 30 s without a limit.
      allocate = { cluster = "test"; vms.web.vcpu = builtins.length (builtins.genList (x: x) 100000000); };
    };
}
