// Package localstack runs a real, throwaway control plane on this machine for
// the end-to-end suite, the demo and benchmarks: etcd and kube-apiserver
// (through controller-runtime's envtest), a Prometheus child process, and an
// in-process exporter whose values tests set. It also builds the zeroscaler
// binary and runs it as a child process.
//
// Everything listens on 127.0.0.1 on free ports and lives in a temporary
// directory. Start returns a Stack; Stop ends every process it started, and
// child processes die with the parent even when it is killed (Pdeathsig for
// Prometheus and the daemon, a watchdog for envtest's processes).
//
// The core API takes no testing.T so that programs can use it too; ForTest
// wraps Start for tests that want their own stack.
package localstack
