package main

import "syscall"

func main() {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, syscall.IPPROTO_IP)
	if err != nil {
		panic(err)
	}

	err = syscall.Bind(fd, &syscall.SockaddrInet4{Port: 8081, Addr: [4]byte{127, 0, 0, 1}})
	if err != nil {
		panic(err)
	}

	err = syscall.Connect(fd, &syscall.SockaddrInet4{Port: 8080, Addr: [4]byte{127, 0, 0, 1}})
	if err != nil {
		panic(err)
	}

	size, err := syscall.Write(fd, []byte("hello "))
	if err != nil {
		panic(err)
	}
	println("written bytes: ", size)

	size, err = syscall.Write(fd, []byte("world!"))
	if err != nil {
		panic(err)
	}
	println("written bytes: ", size)

	err = syscall.Close(fd)
	if err != nil {
		panic(err)
	}
}
