from offline_seg.cli import main

main()
