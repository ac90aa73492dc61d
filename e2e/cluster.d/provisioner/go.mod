module stagecoach.local/provisioner

go 1.22
