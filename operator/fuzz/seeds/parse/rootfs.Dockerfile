# rootfs: an image from nothing but a root filesystem tarball. ADD unpacks a local tar
# archive (here xz-compressed) into the image.
FROM scratch
ADD rootfs.tar.xz /
ENV PATH=/bin
CMD ["/bin/sh"]
