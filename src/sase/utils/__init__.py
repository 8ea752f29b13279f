"""Small pieces shared by the search and training loops."""
