module local/vectors

go 1.19
