"""Dataset side: dataset configs (megraphau/configs/*.yaml), list and label files, images and transforms."""
