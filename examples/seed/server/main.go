package main

import (
	"fmt"
	"syscall"
)

func main() {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, syscall.IPPROTO_IP)
	if err != nil {
		panic(err)
	}

	err = syscall.Bind(fd, &syscall.SockaddrInet4{Port: 8080, Addr: [4]byte{127, 0, 0, 1}})
	if err != nil {
		panic(err)
	}

	err = syscall.Listen(fd, 1)
	if err != nil {
		panic(err)
	}

	nfd, _, err := syscall.Accept(fd)
	if err != nil {
		panic(err)
	}

	buf := make([]byte, 4)
	size := 1
	totSize := 0
	for size > 0 {
		size, err = syscall.Read(nfd, buf)
		if err != nil {
			panic(err)
		}

		fmt.Println(string(buf[0:size]))
		buf = make([]byte, 4)
		totSize = totSize + size
	}

	fmt.Println()
	fmt.Println("Total size: ", totSize)

	err = syscall.Close(fd)
	if err != nil {
		panic(err)
	}
}
