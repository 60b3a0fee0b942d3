{
  outputs = { self }: {
    blixard = { cluster = "test" };
  };
}
