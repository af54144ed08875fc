//go:build !linux

package localstack

import "syscall"

// childAttr has no way outside Linux to tie a child's life to this process.
func childAttr() *syscall.SysProcAttr { return nil }

// childPIDs finds nothing outside Linux, so the watchdog watches nothing.
func childPIDs() map[int]bool { return nil }

// killLeftovers has nothing to kill outside Linux: childPIDs finds nothing.
func killLeftovers([]int) error { return nil }
