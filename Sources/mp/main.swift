print("mp")
