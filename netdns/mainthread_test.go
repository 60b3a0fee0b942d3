package netdns_test

import "runtime"

// The main goroutine keeps the process's main thread to itself, so that no
// test goroutine which enters a network namespace on a locked thread ever
// runs there: /proc/PID/ns/net is the main thread's namespace, and a lab's
// teardown kills every process it finds in its namespaces (and a locked
// thread that ends in a namespace is wedged, not ended, when it is the main
// one).
func init() { runtime.LockOSThread() }
