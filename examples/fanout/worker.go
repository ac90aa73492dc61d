//go:build ignore

// worker processes one batch of jobs and exits; here the jobs are numbers to sum.
package main

import (
	"fmt"
	"os"
	"strconv"
)

func main() {
	sum := 0
	for _, arg := range os.Args[1:] {
		n, err := strconv.Atoi(arg)
		if err != nil {
			fmt.Fprintf(os.Stderr, "worker: %q is not a number\n", arg)
			os.Exit(2)
		}
		sum += n
	}
	fmt.Printf("worker: %d jobs, sum %d\n", len(os.Args)-1, sum)
}
