module example.invalid/server

go 1.22
